//! From the on-disk shapes to the runtime `Config`: every value is checked, every problem is
//! collected (`file: field: what is wrong`), and loading fails once, with all of them.

use super::backends::{parse_backend_list, parse_backends_file};
use super::file::{
    AccessLogSection, BackendSection, EdgeSection, FileConfig, HashName, HealthCheckName,
    HealthCheckSection, InitializerKind, InitializerSection, LimitsSection, LogFormatName, Scalar,
    TlsSection,
};
use super::units::{parse_duration, parse_size};
use super::*;
use crate::request_checks::HeaderLimits;
use crate::tls::certs::PairPaths;
use crate::tls::store::{CertStore, Event};
use std::collections::HashSet;
use std::fmt;

mod acme;
mod gateway;
mod private_files;
mod site_logs;

const DEFAULT_GRACE_PERIOD_SECONDS: u64 = 10;
const DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS: u64 = 5;
// nginx's defaults, under nginx's names (`limits:`).
const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
const DEFAULT_CLIENT_MAX_BODY_SIZE: u64 = 1 << 20;
const DEFAULT_CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Pingora refuses request headers larger than this itself (1 MiB - 1).
const PINGORA_MAX_HEADER_SIZE: usize = 1_048_575;
const DEFAULT_PROXY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longer than uWSGI's WebSocket pings (every 30 s), which keep a live socket busy anyway; an
/// app that never pings gets an hour of silence before its socket is closed.
const DEFAULT_WEBSOCKET_IDLE_TIMEOUT: Duration = Duration::from_secs(60 * 60);
const DEFAULT_EDGE_UPSTREAM_KEEPALIVE: Duration = Duration::from_secs(60);
/// No pooling: uWSGI's `http-socket` answers HTTP/1.1 without `Connection: close` and then
/// closes, so a pooled connection would be dead on reuse. (With `http11-socket`, set it below
/// uWSGI's `socket-timeout`, 4 s by default, e.g. 2s.)
const DEFAULT_BACKEND_UPSTREAM_KEEPALIVE: Duration = Duration::ZERO;
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_STARTS: usize = 8;
const DEFAULT_START_QUEUE: usize = 1000;
/// A visitor starts a site or two; more than this many a minute is someone walking the list.
const DEFAULT_MAX_STARTS_PER_CLIENT: usize = 30;
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(10);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const DEFAULT_INITIALIZER_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_HEALTH_HOST: &str = "herald-health";
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_HEALTH_FAILURES: usize = 2;
const DEFAULT_HEALTH_SUCCESSES: usize = 2;
/// Pingora's own bound on a TLS handshake, which is also nginx's default
/// `ssl_handshake_timeout`.
const PINGORA_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_UNIX_SOCKET_PATH: usize = 107;

/// Every problem found in one configuration file.
#[derive(Debug)]
pub struct ConfigError {
    file: String,
    problems: Vec<(String, String)>,
}

impl ConfigError {
    pub fn single(file: &str, field: &str, message: String) -> Self {
        ConfigError {
            file: file.to_owned(),
            problems: vec![(field.to_owned(), message)],
        }
    }

    /// Problems found in `file`, as (field, message).
    pub fn many(file: &str, problems: Vec<(String, String)>) -> Self {
        ConfigError {
            file: file.to_owned(),
            problems,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (field, message)) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            // A file name in a message may hold anything; no problem may forge another line.
            let message = crate::logging::printable(message);
            match field.as_str() {
                "" => write!(f, "{}: {message}", self.file)?,
                field => write!(f, "{}: {field}: {message}", self.file)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
    let raw: FileConfig = if text.trim().is_empty() {
        FileConfig::default()
    } else {
        serde_yaml::from_str(text).map_err(|e| yaml_error(file, &e))?
    };
    let mut check = Checker {
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    let mut config = check.config(raw);
    if check.problems.is_empty() {
        config.warnings = check
            .warnings
            .into_iter()
            .map(|(field, message)| format!("{file}: {field}: warning: {message}"))
            .collect();
        Ok(config)
    } else {
        Err(ConfigError {
            file: file.to_owned(),
            problems: check.problems,
        })
    }
}

/// serde_yaml reports `path.to.field: message at line L column C`; keep the path as the field.
pub(crate) fn yaml_error(file: &str, error: &serde_yaml::Error) -> ConfigError {
    let text = error.to_string();
    match text.split_once(": ") {
        Some((path, message)) if !path.contains(' ') => {
            ConfigError::single(file, path, message.to_owned())
        }
        _ => ConfigError::single(file, "", text),
    }
}

struct Checker {
    problems: Vec<(String, String)>,
    warnings: Vec<(String, String)>,
}

impl Checker {
    fn bad(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push((field.into(), message.into()));
    }

    fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.warnings.push((field.into(), message.into()));
    }

    fn config(&mut self, raw: FileConfig) -> Config {
        if raw.edge.is_none() && raw.backend.is_none() {
            self.bad(
                "",
                "nothing to run: declare an `edge` section, a `backend` section, or both",
            );
        }
        let server = self.server(raw.server);
        let metrics = raw.metrics.and_then(|m| {
            self.socket_addr("metrics.listen", &m.listen)
                .map(|listen| MetricsConfig { listen })
        });
        let edge = raw.edge.map(|e| self.edge(e));
        let backend = raw.backend.map(|b| self.backend(b));
        let config = Config {
            server,
            metrics,
            edge,
            backend,
            warnings: Vec::new(),
        };
        self.listeners_are_distinct(&config);
        self.runtime_files_are_private(&config);
        config
    }

    fn server(&mut self, raw: Option<serde_yaml::Mapping>) -> ServerConf {
        let raw = raw.unwrap_or_default();
        let known = serde_yaml::to_value(ServerConf::default()).expect("ServerConf serializes");
        let known = known.as_mapping().expect("ServerConf is a mapping");
        for key in raw.keys() {
            if !known.contains_key(key) {
                let name = key
                    .as_str()
                    .map_or_else(|| format!("{key:?}"), str::to_owned);
                self.bad(
                    format!("server.{name}"),
                    "unknown key (expected a Pingora ServerConf field such as threads, pid_file, upgrade_sock, error_log, grace_period_seconds)",
                );
            }
        }
        let mut conf: ServerConf =
            match serde_yaml::from_value(serde_yaml::Value::Mapping(raw.clone())) {
                Ok(conf) => conf,
                Err(e) => {
                    // Read from a `Value`, serde_yaml names no field: each known key is tried
                    // alone over the defaults, so every bad one is named.
                    let mut named = false;
                    for (key, value) in raw.iter().filter(|(key, _)| known.contains_key(*key)) {
                        let mut alone = known.clone();
                        alone.insert(key.clone(), value.clone());
                        if let Err(e) = serde_yaml::from_value::<ServerConf>(alone.into()) {
                            let name = key.as_str().unwrap_or_default();
                            self.bad(format!("server.{name}"), e.to_string());
                            named = true;
                        }
                    }
                    if !named {
                        self.bad("server", e.to_string());
                    }
                    ServerConf::default()
                }
            };
        if !raw.contains_key("work_stealing") {
            // A plain single-thread runtime per worker thread: measured cheaper per request
            // than Pingora's default (a one-worker work-stealing scheduler per thread) on
            // both roles (bench/ab.py; BENCHMARKS.md).
            conf.work_stealing = false;
        }
        conf.grace_period_seconds
            .get_or_insert(DEFAULT_GRACE_PERIOD_SECONDS);
        conf.graceful_shutdown_timeout_seconds
            .get_or_insert(DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS);
        if conf.threads == 0 {
            self.bad("server.threads", "must be at least 1");
        }
        if conf.max_retries == 0 {
            // Pingora would then never try the upstream and close every connection unanswered.
            self.bad("server.max_retries", "must be at least 1");
        }
        for (field, path) in [
            ("server.pid_file", &conf.pid_file),
            ("server.upgrade_sock", &conf.upgrade_sock),
        ] {
            self.absolute_file_in_existing_dir(field, path);
        }
        if let Some(error_log) = &conf.error_log {
            self.absolute_file_in_existing_dir("server.error_log", error_log);
        }
        conf
    }

    fn edge(&mut self, raw: EdgeSection) -> EdgeConfig {
        let frontend = self.frontend(
            "edge",
            &raw.listen,
            raw.health_host.as_ref(),
            raw.allow_ip_hosts,
            raw.limits.as_ref(),
            raw.websocket_idle_timeout.as_ref(),
        );
        let mut frontend = self.logs_and_pages(
            frontend,
            "edge",
            raw.access_log.as_ref(),
            raw.error_pages.as_deref(),
        );
        if raw
            .access_log
            .as_ref()
            .is_some_and(|log| log.per_site.is_some())
        {
            self.bad(
                "edge.access_log.per_site",
                "per-site logs are written by the backend, which serves the sites",
            );
        }
        frontend.trusted_proxies = self.trusted_proxies("edge", raw.trusted_proxies.as_deref());
        let hash = match raw.hash.unwrap_or(HashName::Ketama) {
            HashName::Ketama => HashMode::Ketama,
            HashName::Modulo => HashMode::Modulo,
        };
        let (backends, backends_file) = match (&raw.backends, &raw.backends_file) {
            (Some(list), None) => (self.backend_list("edge.backends", list, hash), None),
            (None, Some(path)) => (
                self.backends_file("edge.backends_file", path, hash),
                Some(PathBuf::from(path)),
            ),
            (Some(_), Some(_)) => {
                self.bad(
                    "edge.backends_file",
                    "give either `backends` or `backends_file`, not both",
                );
                (Vec::new(), None)
            }
            (None, None) => {
                self.bad(
                    "edge.backends",
                    "needs a list of backends, or `backends_file`",
                );
                (Vec::new(), None)
            }
        };
        let health_check = self.health_check(raw.health_check.as_ref(), &frontend.health_host);
        let upstream = self.upstream_timeouts(
            "edge",
            raw.limits.as_ref(),
            raw.upstream_keepalive_timeout.as_ref(),
            DEFAULT_EDGE_UPSTREAM_KEEPALIVE,
        );
        EdgeConfig {
            frontend,
            hash,
            backends,
            backends_file,
            health_check,
            retry_idempotent: raw.retry_idempotent.unwrap_or(false),
            upstream,
            tls: raw.tls.as_ref().and_then(|tls| self.tls(tls)),
            h2c: raw.h2c.unwrap_or(false),
        }
    }

    /// The TLS listeners, and their certificates read now: a bad default pair is an error, a
    /// bad pair in `certs_dir` a warning (it is skipped, and a reload must not fail because
    /// of one site's certificate).
    fn tls(&mut self, raw: &TlsSection) -> Option<TlsConfig> {
        if raw.listen.is_empty() {
            self.bad(
                "edge.tls.listen",
                "needs at least one address, like 0.0.0.0:443",
            );
        }
        let listen = raw
            .listen
            .iter()
            .enumerate()
            .filter_map(|(i, text)| self.socket_addr(&format!("edge.tls.listen[{i}]"), text))
            .collect();
        let problems = self.problems.len();
        let certs_dir = raw
            .certs_dir
            .as_ref()
            .map(|dir| self.existing_dir("edge.tls.certs_dir", dir));
        let default = match (&raw.default_cert, &raw.default_key) {
            (Some(cert), Some(key)) => {
                self.absolute_path("edge.tls.default_cert", cert);
                self.absolute_path("edge.tls.default_key", key);
                Some(PairPaths {
                    cert: PathBuf::from(cert),
                    key: PathBuf::from(key),
                })
            }
            (Some(_), None) => {
                self.bad("edge.tls.default_key", "needed with default_cert");
                None
            }
            (None, Some(_)) => {
                self.bad("edge.tls.default_cert", "needed with default_key");
                None
            }
            (None, None) => None,
        };
        if certs_dir.is_none() && raw.default_cert.is_none() && raw.default_key.is_none() {
            self.bad(
                "edge.tls",
                "needs certs_dir, or default_cert and default_key, or both",
            );
        }
        if self.problems.len() > problems {
            // No certificate can be read from where they are said to be.
            return None;
        }
        let default_paths = default.clone();
        let (certificates, events) = match CertStore::load(certs_dir.as_deref(), default) {
            Ok(loaded) => loaded,
            Err(e) => {
                self.bad("edge.tls.certs_dir", format!("cannot read it: {e}"));
                return None;
            }
        };
        let mut reported = Vec::new();
        for event in events {
            let Event::Failed { problem, .. } = event else {
                continue;
            };
            // The default pair may also sit in certs_dir: one line for it is enough.
            if reported.contains(&problem) {
                continue;
            }
            reported.push(problem.clone());
            match &default_paths {
                Some(paths) if problem.file == paths.key => {
                    self.bad("edge.tls.default_key", problem.to_string())
                }
                Some(paths) if problem.file == paths.cert => {
                    self.bad("edge.tls.default_cert", problem.to_string())
                }
                _ => self.warn(
                    "edge.tls.certs_dir",
                    format!("{problem}; this pair is skipped"),
                ),
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let expired: Vec<String> = certificates
            .served()
            .filter(|(_, pair)| pair.not_after < now)
            .map(|(cert, pair)| format!("{}: expired on {}", cert.display(), pair.not_after_text))
            .collect();
        for message in expired {
            self.warn("edge.tls", message);
        }
        if certificates.summary().loaded == 0 {
            self.warn(
                "edge.tls",
                "no certificate yet: TLS handshakes fail until a pair is added to certs_dir",
            );
        }
        let handshake_timeout = self.positive_duration(
            "edge.tls.ssl_handshake_timeout",
            raw.ssl_handshake_timeout.as_ref(),
            PINGORA_HANDSHAKE_TIMEOUT,
        );
        if handshake_timeout > PINGORA_HANDSHAKE_TIMEOUT {
            self.bad(
                "edge.tls.ssl_handshake_timeout",
                "at most 60s: Pingora ends every handshake after 60 s itself",
            );
        }
        let acme = raw
            .acme
            .as_ref()
            .and_then(|section| self.acme(section, handshake_timeout));
        Some(TlsConfig {
            listen,
            certificates,
            handshake_timeout,
            acme,
        })
    }

    fn health_check(
        &mut self,
        raw: Option<&HealthCheckSection>,
        health_host: &str,
    ) -> HealthCheckConfig {
        let field = |key: &str| format!("edge.health_check.{key}");
        let interval = self.duration(
            &field("interval"),
            raw.and_then(|r| r.interval.as_ref()),
            DEFAULT_HEALTH_INTERVAL,
        );
        let timeout = self.duration(
            &field("timeout"),
            raw.and_then(|r| r.timeout.as_ref()),
            DEFAULT_HEALTH_TIMEOUT,
        );
        if interval.is_zero() || timeout.is_zero() {
            self.bad(
                field("interval"),
                "interval and timeout must be more than 0",
            );
        }
        let failures = raw
            .and_then(|r| r.failures)
            .unwrap_or(DEFAULT_HEALTH_FAILURES);
        let successes = raw
            .and_then(|r| r.successes)
            .unwrap_or(DEFAULT_HEALTH_SUCCESSES);
        for (key, count) in [("failures", failures), ("successes", successes)] {
            if count == 0 {
                self.bad(field(key), "must be at least 1");
            }
        }
        let kind = match raw.and_then(|r| r.kind).unwrap_or(HealthCheckName::Tcp) {
            HealthCheckName::Tcp => {
                for (key, set) in [
                    ("path", raw.is_some_and(|r| r.path.is_some())),
                    ("host", raw.is_some_and(|r| r.host.is_some())),
                    ("expect", raw.is_some_and(|r| r.expect.is_some())),
                ] {
                    if set {
                        self.bad(field(key), "only used with `kind: http`");
                    }
                }
                HealthCheckKind::Tcp
            }
            HealthCheckName::Http => {
                let path = raw
                    .and_then(|r| r.path.clone())
                    .unwrap_or_else(|| "/".to_owned());
                if !path.starts_with('/')
                    || http::uri::PathAndQuery::try_from(path.as_str()).is_err()
                {
                    self.bad(
                        field("path"),
                        format!("invalid path {path:?}: expected something like /health"),
                    );
                }
                let host = raw
                    .and_then(|r| r.host.clone())
                    .unwrap_or_else(|| health_host.to_owned());
                if http::HeaderValue::try_from(host.as_str()).is_err() || host.is_empty() {
                    self.bad(field("host"), format!("invalid host {host:?}"));
                }
                let expect = raw.and_then(|r| r.expect).unwrap_or(200);
                if !(100..=599).contains(&expect) {
                    self.bad(field("expect"), format!("{expect} is not an HTTP status"));
                }
                HealthCheckKind::Http { path, host, expect }
            }
        };
        HealthCheckConfig {
            kind,
            interval,
            timeout,
            failures,
            successes,
        }
    }

    fn backend(&mut self, raw: BackendSection) -> BackendConfig {
        let frontend = self.frontend(
            "backend",
            &raw.listen,
            raw.health_host.as_ref(),
            raw.allow_ip_hosts,
            raw.limits.as_ref(),
            raw.websocket_idle_timeout.as_ref(),
        );
        let mut frontend = self.logs_and_pages(
            frontend,
            "backend",
            raw.access_log.as_ref(),
            raw.error_pages.as_deref(),
        );
        frontend.trusted_proxies = self.trusted_proxies("backend", raw.trusted_proxies.as_deref());
        let sites_dir = self.existing_dir("backend.sites_dir", &raw.sites_dir);
        let vassals_dir = self.existing_dir("backend.vassals_dir", &raw.vassals_dir);
        let socket_path = self.socket_template("backend.socket_path", &raw.socket_path);
        let upstream = self.upstream_timeouts(
            "backend",
            raw.limits.as_ref(),
            raw.upstream_keepalive_timeout.as_ref(),
            DEFAULT_BACKEND_UPSTREAM_KEEPALIVE,
        );
        let starts = self.app_starts(&raw);
        let emperor_stats = raw.emperor_stats.as_deref().and_then(|text| {
            if text.starts_with('/') {
                self.absolute_file_in_existing_dir("backend.emperor_stats", text);
                Some(StatsAddress::Unix(PathBuf::from(text)))
            } else if let Ok(addr) = text.parse() {
                Some(StatsAddress::Tcp(addr))
            } else {
                self.bad(
                    "backend.emperor_stats",
                    format!("{text:?}: expected the path of a unix socket or ip:port, as given to uwsgi --emperor-stats"),
                );
                None
            }
        });
        self.backend_dirs_are_distinct(&sites_dir, &vassals_dir, &socket_path);
        let gateway = self.gateway(&raw);
        let site_logs = self.site_logs(&raw);
        if !upstream.keepalive.is_zero()
            && (gateway.request_buffering || gateway.response_buffering)
        {
            self.warn(
                "backend.upstream_keepalive_timeout",
                "only used for http apps with request_buffering and response_buffering off: \
                 a buffered exchange always closes its connection",
            );
        }
        BackendConfig {
            frontend,
            sites_dir,
            vassals_dir,
            socket_path,
            upstream,
            starts,
            emperor_stats,
            gateway,
            site_logs,
        }
    }

    fn app_starts(&mut self, raw: &BackendSection) -> AppStarts {
        let initializer = self.initializer(raw.initializer.as_ref());
        let max_starts = raw.max_starts.unwrap_or(DEFAULT_MAX_STARTS);
        if max_starts == 0 {
            self.bad("backend.max_starts", "must be at least 1");
        }
        let idle_timeout = self.duration(
            "backend.idle_timeout",
            raw.idle_timeout.as_ref(),
            DEFAULT_IDLE_TIMEOUT,
        );
        let start_timeout = self.duration(
            "backend.start_timeout",
            raw.start_timeout.as_ref(),
            DEFAULT_START_TIMEOUT,
        );
        if start_timeout.is_zero() {
            self.bad("backend.start_timeout", "must be more than 0");
        }
        let max_running_apps = raw.max_running_apps;
        if max_running_apps == Some(0) {
            self.bad(
                "backend.max_running_apps",
                "must be at least 1 (leave it out for no cap)",
            );
        }
        let can_stop = match &initializer {
            InitializerConfig::Local => true,
            InitializerConfig::Http(http) => http.stop.is_some(),
        };
        if max_running_apps.is_some() && !can_stop {
            self.bad(
                "backend.max_running_apps",
                "needs a way to stop apps: set initializer.stop_url",
            );
        }
        AppStarts {
            initializer,
            start_timeout,
            max_starts,
            max_running_apps,
            max_starts_per_client: Some(
                raw.max_starts_per_client
                    .unwrap_or(DEFAULT_MAX_STARTS_PER_CLIENT),
            )
            .filter(|n| *n > 0),
            start_queue: raw.start_queue.unwrap_or(DEFAULT_START_QUEUE),
            retry_after: self.duration(
                "backend.retry_after",
                raw.retry_after.as_ref(),
                DEFAULT_RETRY_AFTER,
            ),
            idle_timeout: (!idle_timeout.is_zero()).then_some(idle_timeout),
        }
    }

    fn initializer(&mut self, raw: Option<&InitializerSection>) -> InitializerConfig {
        let Some(raw) = raw else {
            return InitializerConfig::Local;
        };
        match raw.kind.unwrap_or(InitializerKind::Local) {
            InitializerKind::Local => {
                for (key, set) in [
                    ("url", raw.url.is_some()),
                    ("stop_url", raw.stop_url.is_some()),
                    ("timeout", raw.timeout.is_some()),
                ] {
                    if set {
                        self.bad(
                            format!("backend.initializer.{key}"),
                            "only used with `kind: http`",
                        );
                    }
                }
                InitializerConfig::Local
            }
            InitializerKind::Http => {
                let start = match &raw.url {
                    Some(url) => self.http_endpoint("backend.initializer.url", url),
                    None => {
                        self.bad(
                            "backend.initializer.url",
                            "required with `kind: http`, like http://127.0.0.1:8001/start",
                        );
                        None
                    }
                };
                let stop = raw
                    .stop_url
                    .as_ref()
                    .and_then(|url| self.http_endpoint("backend.initializer.stop_url", url));
                let timeout = self.duration(
                    "backend.initializer.timeout",
                    raw.timeout.as_ref(),
                    DEFAULT_INITIALIZER_TIMEOUT,
                );
                match start {
                    Some(start) => InitializerConfig::Http(Box::new(HttpInitializerConfig {
                        start,
                        stop,
                        timeout,
                    })),
                    None => InitializerConfig::Local,
                }
            }
        }
    }

    fn http_endpoint(&mut self, field: &str, url: &str) -> Option<HttpEndpoint> {
        match parse_http_url(url) {
            Ok(endpoint) => Some(endpoint),
            Err(message) => {
                self.bad(field, message);
                None
            }
        }
    }

    fn frontend(
        &mut self,
        role: &str,
        listen: &[String],
        health_host: Option<&String>,
        allow_ip_hosts: Option<bool>,
        limits: Option<&LimitsSection>,
        websocket_idle_timeout: Option<&Scalar>,
    ) -> Frontend {
        if listen.is_empty() {
            self.bad(
                format!("{role}.listen"),
                "needs at least one address, like 0.0.0.0:80",
            );
        }
        let listen = listen
            .iter()
            .enumerate()
            .filter_map(|(i, text)| self.socket_addr(&format!("{role}.listen[{i}]"), text))
            .collect();
        let health_host = match health_host {
            None => DEFAULT_HEALTH_HOST.to_owned(),
            Some(name) => match crate::host::parse_site(name.as_bytes(), false) {
                Ok(site) if site == *name => site,
                _ => {
                    self.bad(
                        format!("{role}.health_host"),
                        format!("{name:?} must be a lowercase host name, like herald-health"),
                    );
                    DEFAULT_HEALTH_HOST.to_owned()
                }
            },
        };
        let default = LimitsSection::default();
        let limits = limits.unwrap_or(&default);
        let field = |key: &str| format!("{role}.limits.{key}");
        let max_body = self.size(
            &field("client_max_body_size"),
            limits.client_max_body_size.as_ref(),
            DEFAULT_CLIENT_MAX_BODY_SIZE,
        );
        let client_header_timeout = self.positive_duration(
            &field("client_header_timeout"),
            limits.client_header_timeout.as_ref(),
            DEFAULT_CLIENT_HEADER_TIMEOUT,
        );
        let send_timeout = self.positive_duration(
            &field("send_timeout"),
            limits.send_timeout.as_ref(),
            DEFAULT_SEND_TIMEOUT,
        );
        let header_limits = self.header_buffers(
            &field("large_client_header_buffers"),
            limits.large_client_header_buffers.as_ref(),
        );
        let websocket_idle_timeout = self.positive_duration(
            &format!("{role}.websocket_idle_timeout"),
            websocket_idle_timeout,
            DEFAULT_WEBSOCKET_IDLE_TIMEOUT,
        );
        Frontend {
            listen,
            allow_ip_hosts: allow_ip_hosts.unwrap_or(false),
            health_host,
            keepalive_timeout: self.duration(
                &field("keepalive_timeout"),
                limits.keepalive_timeout.as_ref(),
                DEFAULT_KEEPALIVE_TIMEOUT,
            ),
            client_max_body_size: (max_body > 0).then_some(max_body),
            client_body_timeout: self.duration(
                &field("client_body_timeout"),
                limits.client_body_timeout.as_ref(),
                DEFAULT_CLIENT_BODY_TIMEOUT,
            ),
            websocket_idle_timeout,
            client_header_timeout,
            header_limits,
            send_timeout,
            max_connections_per_client: limits.max_connections_per_client.filter(|n| *n > 0),
            max_open_connections_per_client: limits
                .max_open_connections_per_client
                .filter(|n| *n > 0),
            access_log: crate::access_log::Destination::Off,
            access_log_format: crate::access_log::Format::Combined,
            error_pages: None,
            trusted_proxies: Vec::new(),
        }
    }

    /// `ROLE.trusted_proxies`: nobody unless listed (every app on a backend host can reach the
    /// backend over loopback, so loopback is no proof of being an edge).
    fn trusted_proxies(&mut self, role: &str, list: Option<&[String]>) -> Vec<Cidr> {
        list.unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, text)| {
                Cidr::parse(text)
                    .map_err(|e| self.bad(format!("{role}.trusted_proxies[{i}]"), e))
                    .ok()
            })
            .collect()
    }

    fn logs_and_pages(
        &mut self,
        frontend: Frontend,
        role: &str,
        access_log: Option<&AccessLogSection>,
        error_pages: Option<&str>,
    ) -> Frontend {
        use crate::access_log::{Destination, Format};
        let destination = match access_log.map(|a| a.path.as_str()) {
            None | Some("off") => Destination::Off,
            Some("-") => Destination::Stdout,
            Some(path) => {
                self.absolute_file_in_existing_dir(&format!("{role}.access_log.path"), path);
                Destination::File(PathBuf::from(path))
            }
        };
        let format = match access_log.and_then(|a| a.format) {
            None | Some(LogFormatName::Combined) => Format::Combined,
            Some(LogFormatName::Json) => Format::Json,
        };
        let error_pages = error_pages.map(|dir| {
            let field = format!("{role}.error_pages");
            let path = PathBuf::from(dir);
            let problems = self.problems.len();
            self.existing_dir(&field, dir);
            if self.problems.len() == problems {
                if let Err(problem) = crate::pages::ErrorPages::load(&path) {
                    self.bad(field, problem);
                }
            }
            path
        });
        Frontend {
            access_log: destination,
            access_log_format: format,
            error_pages,
            ..frontend
        }
    }

    /// The `proxy_*_timeout` limits of `role`, and how long idle upstream connections are kept.
    fn upstream_timeouts(
        &mut self,
        role: &str,
        limits: Option<&LimitsSection>,
        keepalive: Option<&Scalar>,
        default_keepalive: Duration,
    ) -> UpstreamTimeouts {
        let default = LimitsSection::default();
        let limits = limits.unwrap_or(&default);
        let field = |key: &str| format!("{role}.limits.{key}");
        UpstreamTimeouts {
            connect: self.duration(
                &field("proxy_connect_timeout"),
                limits.proxy_connect_timeout.as_ref(),
                DEFAULT_PROXY_TIMEOUT,
            ),
            read: self.duration(
                &field("proxy_read_timeout"),
                limits.proxy_read_timeout.as_ref(),
                DEFAULT_PROXY_TIMEOUT,
            ),
            send: self.duration(
                &field("proxy_send_timeout"),
                limits.proxy_send_timeout.as_ref(),
                DEFAULT_PROXY_TIMEOUT,
            ),
            keepalive: self.duration(
                &format!("{role}.upstream_keepalive_timeout"),
                keepalive,
                default_keepalive,
            ),
        }
    }

    fn backend_list(
        &mut self,
        field: &str,
        entries: &[Scalar],
        hash: HashMode,
    ) -> Vec<BackendAddr> {
        if entries.is_empty() {
            self.bad(field, "needs at least one backend, like 10.0.0.11:80");
        }
        let places = entries
            .iter()
            .enumerate()
            .map(|(i, Scalar(text))| (format!("{field}[{i}]"), text.as_str()));
        let (backends, problems) = parse_backend_list(places, hash);
        self.problems.extend(problems);
        backends
    }

    fn backends_file(&mut self, field: &str, path: &str, hash: HashMode) -> Vec<BackendAddr> {
        if !Path::new(path).is_absolute() {
            self.bad(field, format!("{path:?} must be an absolute path"));
            return Vec::new();
        }
        match std::fs::read_to_string(path) {
            Err(e) => {
                self.bad(field, format!("cannot read {path:?}: {e}"));
                Vec::new()
            }
            Ok(text) => parse_backends_file(&text, hash).unwrap_or_else(|problems| {
                for problem in problems {
                    self.bad(field, format!("{path}: {problem}"));
                }
                Vec::new()
            }),
        }
    }

    fn socket_addr(&mut self, field: &str, text: &str) -> Option<SocketAddr> {
        text.parse()
            .map_err(|_| {
                self.bad(
                    field,
                    format!(
                        "invalid address {text:?}: expected ip:port, like 0.0.0.0:80 or [::]:80"
                    ),
                )
            })
            .ok()
    }

    fn duration(&mut self, field: &str, value: Option<&Scalar>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(Scalar(text)) => parse_duration(text)
                .map_err(|e| self.bad(field, e))
                .unwrap_or(default),
        }
    }

    /// A duration where 0 would mean nothing sensible (a timeout that fires at once).
    fn positive_duration(
        &mut self,
        field: &str,
        value: Option<&Scalar>,
        default: Duration,
    ) -> Duration {
        let duration = self.duration(field, value, default);
        if duration.is_zero() {
            self.bad(field, "must be more than 0");
            return default;
        }
        duration
    }

    /// nginx's `large_client_header_buffers NUMBER SIZE`.
    fn header_buffers(&mut self, field: &str, value: Option<&Scalar>) -> HeaderLimits {
        let default = HeaderLimits::NGINX_DEFAULT;
        let Some(Scalar(text)) = value else {
            return default;
        };
        let mut words = text.split_whitespace();
        let parsed = match (words.next(), words.next(), words.next()) {
            (Some(number), Some(size), None) => number
                .parse::<usize>()
                .ok()
                .zip(parse_size(size).ok().and_then(|s| usize::try_from(s).ok())),
            _ => None,
        };
        let Some((buffers, buffer_size)) = parsed else {
            self.bad(
                field,
                format!("invalid value {text:?}: expected a number and a size, like \"4 8k\""),
            );
            return default;
        };
        let limits = HeaderLimits {
            buffers,
            buffer_size,
        };
        if buffers == 0 || buffer_size < 1024 {
            self.bad(
                field,
                format!("{text:?}: needs at least one buffer of at least 1k"),
            );
            return default;
        }
        if limits.total() > PINGORA_MAX_HEADER_SIZE {
            self.bad(
                field,
                format!("{text:?}: at most 1m in all (Pingora refuses larger headers itself)"),
            );
            return default;
        }
        limits
    }

    fn size(&mut self, field: &str, value: Option<&Scalar>, default: u64) -> u64 {
        match value {
            None => default,
            Some(Scalar(text)) => parse_size(text)
                .map_err(|e| self.bad(field, e))
                .unwrap_or(default),
        }
    }

    fn existing_dir(&mut self, field: &str, text: &str) -> PathBuf {
        let path = PathBuf::from(text);
        if !path.is_absolute() {
            self.bad(field, format!("{text:?} must be an absolute path"));
        } else if !path.is_dir() {
            self.bad(field, format!("directory {text:?} does not exist"));
        }
        path
    }

    fn absolute_path(&mut self, field: &str, text: &str) {
        if !Path::new(text).is_absolute() {
            self.bad(field, format!("{text:?} must be an absolute path"));
        }
    }

    fn absolute_file_in_existing_dir(&mut self, field: &str, text: &str) {
        let path = Path::new(text);
        if !path.is_absolute() {
            self.bad(field, format!("{text:?} must be an absolute path"));
        } else if !path.parent().is_some_and(Path::is_dir) {
            self.bad(field, format!("the directory of {text:?} does not exist"));
        }
    }

    fn socket_template(&mut self, field: &str, text: &str) -> SocketTemplate {
        let placeholder = SocketTemplate::PLACEHOLDER;
        let fallback = SocketTemplate {
            prefix: String::new(),
            suffix: String::new(),
        };
        if text.matches(placeholder).count() != 1 {
            self.bad(field, format!("{text:?} must contain {placeholder} exactly once, like /run/herald/sockets/{placeholder}.sock"));
            return fallback;
        }
        let (prefix, suffix) = text.split_once(placeholder).expect("counted above");
        if suffix.contains('/') {
            self.bad(
                field,
                format!("{text:?}: {placeholder} must be in the file name, not in a directory"),
            );
            return fallback;
        }
        if !prefix.starts_with('/') {
            self.bad(field, format!("{text:?} must be an absolute path"));
            return fallback;
        }
        let template = SocketTemplate {
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        };
        if !template.directory().is_dir() {
            self.bad(
                field,
                format!("directory {:?} does not exist", template.directory()),
            );
        }
        if template.path_for("").len() + 1 > MAX_UNIX_SOCKET_PATH {
            self.bad(
                field,
                format!(
                    "{text:?} is too long for a unix socket path ({MAX_UNIX_SOCKET_PATH} bytes)"
                ),
            );
        }
        template
    }

    /// The emperor's directory and the sockets' must not be `sites_dir`: stopping an app
    /// removes its vassal from `vassals_dir`, which would then be the site's only definition.
    fn backend_dirs_are_distinct(
        &mut self,
        sites: &Path,
        vassals: &Path,
        sockets: &SocketTemplate,
    ) {
        let canonical = |path: &Path| path.canonicalize().ok();
        let Some(sites) = canonical(sites) else {
            return;
        };
        if canonical(vassals).as_ref() == Some(&sites) {
            self.bad(
                "backend.vassals_dir",
                "is sites_dir: stopping an app removes its vassal from vassals_dir, which would delete the site; give the emperor a directory of its own",
            );
        }
        let socket_dir = canonical(sockets.directory());
        if socket_dir.is_some()
            && (socket_dir == Some(sites.clone()) || socket_dir == canonical(vassals))
        {
            self.bad(
                "backend.socket_path",
                "its directory is sites_dir or vassals_dir: keep the sockets in a directory of their own, which no app can write",
            );
        }
    }

    fn listeners_are_distinct(&mut self, config: &Config) {
        let mut seen: HashSet<SocketAddr> = HashSet::new();
        let mut claim = |field: String, addr: SocketAddr, problems: &mut Vec<(String, String)>| {
            if !seen.insert(addr) {
                problems.push((field, format!("{addr} is already used by another listener")));
            }
        };
        for (role, frontend) in [
            ("edge", config.edge.as_ref().map(|e| &e.frontend)),
            ("backend", config.backend.as_ref().map(|b| &b.frontend)),
        ] {
            for (i, addr) in frontend.iter().flat_map(|f| f.listen.iter()).enumerate() {
                claim(format!("{role}.listen[{i}]"), *addr, &mut self.problems);
            }
        }
        let tls = config.edge.as_ref().and_then(|e| e.tls.as_ref());
        for (i, addr) in tls.iter().flat_map(|t| t.listen.iter()).enumerate() {
            claim(format!("edge.tls.listen[{i}]"), *addr, &mut self.problems);
        }
        if let Some(metrics) = &config.metrics {
            claim("metrics.listen".into(), metrics.listen, &mut self.problems);
        }
    }
}

/// `http://host:port/path` (plain HTTP), resolved now so that no request waits on DNS.
fn parse_http_url(url: &str) -> Result<HttpEndpoint, String> {
    use std::net::ToSocketAddrs;
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("invalid URL {url:?}: expected http://host:port/path"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("invalid URL {url:?}: only http:// is supported"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("invalid URL {url:?}: no host"))?;
    let port = authority.port_u16().unwrap_or(80);
    let addr = (
        authority.host().trim_matches(|c| c == '[' || c == ']'),
        port,
    )
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| format!("invalid URL {url:?}: cannot resolve {:?}", authority.host()))?;
    Ok(HttpEndpoint {
        url: url.to_owned(),
        addr,
        authority: authority.as_str().to_owned(),
        path: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> String {
        parse("t.yaml", yaml).unwrap_err().to_string()
    }

    #[test]
    fn minimal_edge_gets_defaults() {
        let config = parse("t.yaml", "edge:\n  listen: ['127.0.0.1:8080']\n  backends: ['127.0.0.1:9000', '127.0.0.1:9001 3']\n").unwrap();
        let edge = config.edge.unwrap();
        assert_eq!(edge.hash, HashMode::Ketama);
        assert_eq!(edge.backends[1].weight, 3);
        assert_eq!(edge.upstream.connect, DEFAULT_PROXY_TIMEOUT);
        assert_eq!(
            edge.frontend.websocket_idle_timeout,
            DEFAULT_WEBSOCKET_IDLE_TIMEOUT
        );
        assert_eq!(
            config.server.grace_period_seconds,
            Some(DEFAULT_GRACE_PERIOD_SECONDS)
        );
        assert!(!config.server.work_stealing);
        let chosen = parse("t.yaml", "server:\n  work_stealing: true\nedge:\n  listen: ['127.0.0.1:8080']\n  backends: ['127.0.0.1:9000']\n").unwrap();
        assert!(chosen.server.work_stealing, "the operator's choice is kept");
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let text = problems(
            "edge:\n  listen: ['127.0.0.1:80', 'nope']\n  hash: modulo\n  backends: ['10.0.0.1:80', '10.0.0.x:80', '10.0.0.1:80', '10.0.0.2:80 2']\n  limits:\n    proxy_connect_timeout: 5y\n",
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"t.yaml: edge.listen[1]: invalid address \"nope\": expected ip:port, like 0.0.0.0:80 or [::]:80"), "{text}");
        assert!(lines.contains(&"t.yaml: edge.backends[1]: invalid address \"10.0.0.x:80\": expected ip:port, like 10.0.0.11:80"), "{text}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("t.yaml: edge.backends[2]: duplicate backend")),
            "{text}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("t.yaml: edge.backends[3]: weights need")),
            "{text}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l
                    .starts_with("t.yaml: edge.limits.proxy_connect_timeout: invalid duration")),
            "{text}"
        );
        assert_eq!(lines.len(), 5, "{text}");
    }

    #[test]
    fn websocket_idle_timeout_is_a_positive_duration_in_each_role() {
        let edge = "edge:\n  listen: ['127.0.0.1:80']\n  backends: ['10.0.0.1:80']\n";
        let config = parse("t.yaml", &format!("{edge}  websocket_idle_timeout: 15m\n")).unwrap();
        assert_eq!(
            config.edge.unwrap().frontend.websocket_idle_timeout,
            Duration::from_secs(900)
        );
        let backend = "backend:\n  listen: ['127.0.0.1:81']\n  sites_dir: /tmp\n  vassals_dir: /var/tmp\n  socket_path: /var/{host}.sock\n";
        let text = problems(&format!(
            "{edge}  websocket_idle_timeout: 0\n{backend}  websocket_idle_timeout: soon\n"
        ));
        assert!(
            text.contains("t.yaml: edge.websocket_idle_timeout: must be more than 0"),
            "{text}"
        );
        assert!(
            text.contains("t.yaml: backend.websocket_idle_timeout: invalid duration"),
            "{text}"
        );
    }

    #[test]
    fn hostile_input_limits() {
        let base = "edge:\n  listen: ['127.0.0.1:80']\n  backends: ['10.0.0.1:80']\n";
        let edge = parse("t.yaml", base).unwrap().edge.unwrap().frontend;
        assert_eq!(edge.client_header_timeout, Duration::from_secs(60));
        assert_eq!(edge.send_timeout, Duration::from_secs(60));
        assert_eq!(edge.header_limits, HeaderLimits::NGINX_DEFAULT);
        assert_eq!(edge.max_open_connections_per_client, None);
        let yaml = format!("{base}  limits:\n    client_header_timeout: 2s\n    send_timeout: 500ms\n    large_client_header_buffers: 8 16k\n    max_open_connections_per_client: 100\n");
        let edge = parse("t.yaml", &yaml).unwrap().edge.unwrap().frontend;
        assert_eq!(edge.client_header_timeout, Duration::from_secs(2));
        assert_eq!(edge.send_timeout, Duration::from_millis(500));
        assert_eq!(
            (edge.header_limits.buffers, edge.header_limits.buffer_size),
            (8, 16 << 10)
        );
        assert_eq!(edge.max_open_connections_per_client, Some(100));
        for (value, message) in [
            ("8k", "expected a number and a size, like \"4 8k\""),
            ("4 8k 2", "expected a number and a size"),
            ("four 8k", "expected a number and a size"),
            ("0 8k", "at least one buffer of at least 1k"),
            ("4 512", "at least one buffer of at least 1k"),
            ("64 64k", "at most 1m in all"),
        ] {
            let yaml = format!("{base}  limits:\n    large_client_header_buffers: {value}\n");
            let text = problems(&yaml);
            assert!(
                text.starts_with("t.yaml: edge.limits.large_client_header_buffers: ")
                    && text.contains(message),
                "{value}: {text}"
            );
        }
        let text = problems(&format!(
            "{base}  limits:\n    client_header_timeout: 0\n    send_timeout: 0s\n"
        ));
        assert!(
            text.contains("t.yaml: edge.limits.client_header_timeout: must be more than 0"),
            "{text}"
        );
        assert!(
            text.contains("t.yaml: edge.limits.send_timeout: must be more than 0"),
            "{text}"
        );
    }

    #[test]
    fn unknown_keys_name_their_path() {
        assert!(problems(
            "edge:\n  listen: ['127.0.0.1:80']\n  backends: ['10.0.0.1:80']\n  bakends: []\n"
        )
        .starts_with("t.yaml: edge: unknown field `bakends`"));
        assert!(problems("frontend: {}\n").starts_with("t.yaml: unknown field `frontend`"));
        assert_eq!(
            problems("server:\n  threads: many\n  daemon: 3\nedge:\n  listen: ['127.0.0.1:80']\n  backends: ['10.0.0.1:80']\n"),
            "t.yaml: server.threads: invalid type: string \"many\", expected usize\nt.yaml: server.daemon: invalid type: integer `3`, expected a boolean"
        );
        assert!(problems("server:\n  threds: 2\nedge:\n  listen: ['127.0.0.1:80']\n  backends: ['10.0.0.1:80']\n").starts_with("t.yaml: server.threds: unknown key"));
    }

    #[test]
    fn empty_file_has_nothing_to_run() {
        assert!(problems("").contains("nothing to run"));
    }

    #[test]
    fn socket_template_needs_one_host_in_the_file_name() {
        for (template, expect) in [
            ("/tmp/sock.sock", "exactly once"),
            ("/tmp/{host}/{host}.sock", "exactly once"),
            ("/tmp/{host}/app.sock", "must be in the file name"),
            ("run/{host}.sock", "absolute"),
            ("/no/such/dir/{host}.sock", "does not exist"),
        ] {
            let yaml = format!("backend:\n  listen: ['127.0.0.1:80']\n  sites_dir: /tmp\n  vassals_dir: /var/tmp\n  socket_path: {template}\n");
            assert!(
                problems(&yaml).contains(expect),
                "{template}: {}",
                problems(&yaml)
            );
        }
        let yaml = "backend:\n  listen: ['127.0.0.1:80']\n  sites_dir: /tmp\n  vassals_dir: /var/tmp\n  socket_path: /var/{host}.sock\n";
        let backend = parse("t.yaml", yaml).unwrap().backend.unwrap();
        assert_eq!(
            backend.socket_path.path_for("a.example"),
            "/var/a.example.sock"
        );
    }

    #[test]
    fn app_start_settings() {
        let base = "backend:\n  listen: ['127.0.0.1:80']\n  sites_dir: /tmp\n  vassals_dir: /var/tmp\n  socket_path: /var/{host}.sock\n";
        let starts = parse("t.yaml", base).unwrap().backend.unwrap().starts;
        assert!(matches!(starts.initializer, InitializerConfig::Local));
        assert_eq!(starts.idle_timeout, Some(DEFAULT_IDLE_TIMEOUT));
        let yaml = format!("{base}  idle_timeout: 0\n  initializer:\n    kind: http\n    url: http://127.0.0.1:8001/start?x=1\n    timeout: 500ms\n");
        let starts = parse("t.yaml", &yaml).unwrap().backend.unwrap().starts;
        assert_eq!(starts.idle_timeout, None);
        let InitializerConfig::Http(http) = starts.initializer else {
            panic!("http initializer expected");
        };
        let HttpInitializerConfig {
            start,
            stop,
            timeout,
        } = *http;
        assert_eq!(start.addr, "127.0.0.1:8001".parse().unwrap());
        assert_eq!(start.path, "/start?x=1");
        assert_eq!(start.authority, "127.0.0.1:8001");
        assert_eq!(stop, None);
        assert_eq!(timeout, Duration::from_millis(500));
        let yaml = format!("{base}  max_starts: 0\n  initializer:\n    kind: http\n    url: https://x/\n    stop_url: nope\n");
        let text = problems(&yaml);
        assert!(
            text.contains("backend.max_starts: must be at least 1"),
            "{text}"
        );
        assert!(
            text.contains("backend.initializer.url: invalid URL \"https://x/\": only http://"),
            "{text}"
        );
        assert!(
            text.contains("backend.initializer.stop_url: invalid URL"),
            "{text}"
        );
        let yaml = format!("{base}  initializer:\n    kind: local\n    url: http://127.0.0.1/\n");
        assert!(problems(&yaml).contains("backend.initializer.url: only used with `kind: http`"));
    }
}
