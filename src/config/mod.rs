//! Herald's configuration: one YAML file per node, read into on-disk types (`file`), then
//! checked as a whole into the runtime types below (`validate`), which the rest of Herald uses.

pub mod backends;
mod file;
pub mod units;
mod validate;

use crate::cidr::Cidr;
use pingora::server::configuration::ServerConf;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) use file::Scalar;
pub(crate) use validate::yaml_error;
pub use validate::ConfigError;

#[derive(Debug)]
pub struct Config {
    pub server: ServerConf,
    pub metrics: Option<MetricsConfig>,
    pub edge: Option<EdgeConfig>,
    pub backend: Option<BackendConfig>,
    /// Things that do not stop Herald but deserve a look, as `file: field: warning: message`.
    pub warnings: Vec<String>,
}

#[derive(Debug)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

/// What both roles do with the requests they accept, before proxying.
#[derive(Debug, Clone)]
pub struct Frontend {
    pub listen: Vec<SocketAddr>,
    pub allow_ip_hosts: bool,
    /// Requests for this Host are answered 200 at once, for health checks; no site is touched.
    pub health_host: String,
    /// How long an idle client keep-alive connection stays open.
    pub keepalive_timeout: Duration,
    /// `None` means unlimited.
    pub client_max_body_size: Option<u64>,
    /// Longest pause while a request body is read.
    pub client_body_timeout: Duration,
    /// How long an upgraded (WebSocket) connection may carry nothing in either direction
    /// before it is closed; replaces `client_body_timeout` and `proxy_read_timeout` for it.
    pub websocket_idle_timeout: Duration,
    /// Longest time a request header may take to arrive, in all (not per read).
    pub client_header_timeout: Duration,
    /// Size limits of a request header (`large_client_header_buffers`).
    pub header_limits: crate::request_checks::HeaderLimits,
    /// Longest pause while a response is written to a client that does not read it.
    pub send_timeout: Duration,
    /// Requests from one client IP in progress at once (nginx's `limit_conn`); `None`: no limit.
    pub max_connections_per_client: Option<usize>,
    /// Connections one client IP may hold open at once, idle or not; `None`: no limit.
    pub max_open_connections_per_client: Option<usize>,
    pub access_log: crate::access_log::Destination,
    pub access_log_format: crate::access_log::Format,
    /// `NNN.html` files that replace the built-in pages.
    pub error_pages: Option<PathBuf>,
    /// Peers whose word about the client (`Forwarded`, `X-Forwarded-*`) is believed: for an
    /// edge, the operator's load balancer or TLS terminator; for a backend, the edges.
    pub trusted_proxies: Vec<Cidr>,
}

/// How a role talks to its upstreams.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTimeouts {
    pub connect: Duration,
    pub read: Duration,
    pub send: Duration,
    /// How long an idle pooled upstream connection is kept for reuse.
    pub keepalive: Duration,
}

impl UpstreamTimeouts {
    pub fn apply_to(&self, options: &mut pingora::upstreams::peer::PeerOptions) {
        options.connection_timeout = Some(self.connect);
        options.read_timeout = Some(self.read);
        options.write_timeout = Some(self.send);
        options.idle_timeout = Some(self.keepalive);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashMode {
    Ketama,
    Modulo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendAddr {
    pub addr: SocketAddr,
    pub weight: usize,
}

#[derive(Debug, Clone)]
pub struct EdgeConfig {
    pub frontend: Frontend,
    pub hash: HashMode,
    /// The list as configured, or as the backends file read when the configuration loaded.
    pub backends: Vec<BackendAddr>,
    /// Re-read while running, when set.
    pub backends_file: Option<PathBuf>,
    pub health_check: HealthCheckConfig,
    /// Whether an idempotent request already sent to a backend that failed is retried on the
    /// next one.
    pub retry_idempotent: bool,
    pub upstream: UpstreamTimeouts,
    pub tls: Option<TlsConfig>,
    /// HTTP/2 without TLS (prior knowledge) on the plain listeners.
    pub h2c: bool,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub listen: Vec<SocketAddr>,
    /// The certificates as read when the configuration was checked; the edge keeps them
    /// current from then on.
    pub certificates: crate::tls::store::CertStore,
    /// From the accept to the end of the handshake (nginx's `ssl_handshake_timeout`).
    pub handshake_timeout: Duration,
    /// Certificates ordered on demand (`edge.tls.acme`).
    pub acme: Option<AcmeConfig>,
}

#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The ACME server's directory URL (https).
    pub directory: String,
    /// `mailto:` addresses for the account, if any.
    pub contact: Vec<String>,
    /// `GET ask?domain=NAME`: 200 approves ordering a certificate for NAME.
    pub ask: http::Uri,
    pub storage: AcmeStorage,
    /// PEM roots trusted for the ACME server beside the system's.
    pub ca_roots: Option<PathBuf>,
    /// How long a handshake for a name being ordered waits for its certificate.
    pub wait: Duration,
    pub max_orders_per_hour: u32,
    /// Orders waiting for their turn, at most.
    pub queue: usize,
    /// How often each edge looks for certificates other edges stored.
    pub sync_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcmeStorage {
    /// `redis://host:port/db`: shared by every edge.
    Redis(String),
    /// A directory only Herald can read: one edge.
    Directory(PathBuf),
}

#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    pub kind: HealthCheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures before a backend is marked down.
    pub failures: usize,
    /// Consecutive successes before it is marked up again.
    pub successes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheckKind {
    Tcp,
    Http {
        path: String,
        host: String,
        expect: u16,
    },
}

#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub frontend: Frontend,
    pub sites_dir: PathBuf,
    pub vassals_dir: PathBuf,
    pub socket_path: SocketTemplate,
    pub upstream: UpstreamTimeouts,
    pub starts: AppStarts,
    /// The uWSGI emperor's stats server, connected to after a vassal changes so that the
    /// emperor scans its directory at once instead of at its next period.
    pub emperor_stats: Option<StatsAddress>,
    /// How requests are handed to apps: protocol, environ, buffering.
    pub gateway: GatewayConfig,
    /// Each site's own access and error log.
    pub site_logs: SiteLogsConfig,
}

#[derive(Debug, Clone, Default)]
pub struct SiteLogsConfig {
    pub access: Option<SiteTemplate>,
    pub errors: Option<SiteTemplate>,
}

/// How an app's socket is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppProtocol {
    /// uWSGI's `socket`: the uwsgi protocol, with the CGI environ nginx's `uwsgi_pass` builds.
    Uwsgi,
    /// uWSGI's `http-socket`: HTTP/1.1, with `X-Forwarded-*`.
    Http,
}

/// nginx's application-gateway settings, under nginx's names where nginx has one.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// For sites whose vassal file does not say.
    pub app_protocol: AppProtocol,
    /// `DOCUMENT_ROOT` in the environ, `{host}` replaced by the site; empty when unset.
    pub document_root: Option<String>,
    /// Read the whole request body before connecting to the app (`proxy_request_buffering`).
    pub request_buffering: bool,
    /// A body larger than this goes to a temp file (`client_body_buffer_size`).
    pub client_body_buffer_size: usize,
    pub client_body_temp_path: PathBuf,
    /// Read the app's answer as fast as it writes it (`proxy_buffering`).
    pub response_buffering: bool,
    /// Memory for an answer the client has not taken yet (`proxy_buffers`: number × size).
    pub proxy_buffers: usize,
    /// The most of one answer kept in a temp file; past it the app waits for the client.
    pub proxy_max_temp_file_size: u64,
    pub proxy_temp_path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatsAddress {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// How apps that are not running are started, and when idle ones are stopped.
#[derive(Debug, Clone)]
pub struct AppStarts {
    pub initializer: InitializerConfig,
    /// How long a start may take before the visitor gets 504; also the age past which an
    /// enabled vassal whose socket does not answer counts as broken.
    pub start_timeout: Duration,
    /// Starts in progress at once, across all sites.
    pub max_starts: usize,
    /// Apps running at once on this backend; `None`: no cap.
    pub max_running_apps: Option<usize>,
    /// Distinct sites one client may cold-start per minute; `None`: no limit.
    pub max_starts_per_client: Option<usize>,
    /// Sites that may wait for a start slot; more get 503 at once.
    pub start_queue: usize,
    /// How long a failed start is remembered (requests meanwhile get the error at once).
    pub retry_after: Duration,
    /// `None`: apps are never stopped.
    pub idle_timeout: Option<Duration>,
}

#[derive(Debug, Clone)]
pub enum InitializerConfig {
    /// Copy `sites_dir/<site>.ini` into `vassals_dir`; remove it to stop.
    Local,
    /// Ask the operator's control plane.
    Http(Box<HttpInitializerConfig>),
}

#[derive(Debug, Clone)]
pub struct HttpInitializerConfig {
    pub start: HttpEndpoint,
    pub stop: Option<HttpEndpoint>,
    /// Per call.
    pub timeout: Duration,
}

/// A plain-HTTP URL resolved once, when the configuration is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpEndpoint {
    pub url: String,
    pub addr: SocketAddr,
    /// The Host header: the URL's authority as written.
    pub authority: String,
    pub path: String,
}

/// `socket_path` with its one `{host}` placeholder, which sits in the file name so that every
/// site's socket is in the same directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketTemplate {
    prefix: String,
    suffix: String,
}

impl SocketTemplate {
    pub const PLACEHOLDER: &'static str = "{host}";

    /// The path for a validated site name (see `host::parse_site`).
    pub fn path_for(&self, site: &str) -> String {
        let mut path = String::with_capacity(self.prefix.len() + site.len() + self.suffix.len());
        path.push_str(&self.prefix);
        path.push_str(site);
        path.push_str(&self.suffix);
        path
    }

    /// The directory every site's socket is in (the template is absolute, so it has a '/').
    pub fn directory(&self) -> &Path {
        let end = self.prefix.rfind('/').map_or(0, |slash| slash + 1);
        Path::new(&self.prefix[..end])
    }
}

/// A per-site path (`/var/log/sites/{host}/access.log`): absolute, `{host}` once, anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteTemplate {
    pub(crate) prefix: String,
    pub(crate) suffix: String,
}

impl SiteTemplate {
    /// The path for a validated site name (see `host::parse_site`: no `/`, never `..`).
    pub fn path_for(&self, site: &str) -> PathBuf {
        PathBuf::from(format!("{}{site}{}", self.prefix, self.suffix))
    }
}

impl Config {
    /// Reads and checks `path`; every problem found is in the error, one per line.
    pub fn load(path: &str) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::single(path, "", format!("cannot read file: {e}")))?;
        validate::parse(path, &text)
    }
}

#[cfg(test)]
pub fn parse_for_tests(text: &str) -> Config {
    validate::parse("test.yaml", text).unwrap_or_else(|e| panic!("{e}"))
}
