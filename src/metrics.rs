//! Every Prometheus metric Herald exports, registered once in the default registry that
//! pingora-prometheus serves.

use arc_swap::ArcSwap;
use once_cell::sync::Lazy;
use prometheus::{
    register_histogram, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

static REQUESTS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "herald_requests_total",
        "Requests answered, by role and status class (none: the client left before an answer)",
        &["role", "code"]
    )
    .expect("metric registers once")
});

static REQUEST_DURATION: Lazy<HistogramVec> = Lazy::new(|| {
    register_histogram_vec!(
        "herald_request_duration_seconds",
        "Time from the request's arrival to the end of its response",
        &["role"],
        vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
    )
    .expect("metric registers once")
});

static REQUESTS_IN_PROGRESS: Lazy<prometheus::IntGaugeVec> = Lazy::new(|| {
    prometheus::register_int_gauge_vec!(
        "herald_requests_in_progress",
        "Requests received and not yet answered, by role",
        &["role"]
    )
    .expect("metric registers once")
});

static WEBSOCKET_DURATION: Lazy<HistogramVec> = Lazy::new(|| {
    register_histogram_vec!(
        "herald_websocket_duration_seconds",
        "How long upgraded (WebSocket) connections stayed open; they are not in herald_request_duration_seconds",
        &["role"],
        vec![1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0]
    )
    .expect("metric registers once")
});

static WEBSOCKETS_OPEN: Lazy<prometheus::IntGaugeVec> = Lazy::new(|| {
    prometheus::register_int_gauge_vec!(
        "herald_websockets_open",
        "Upgraded (WebSocket) connections open now, by role",
        &["role"]
    )
    .expect("metric registers once")
});

const CODE_CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// A role's request metrics with their label values resolved up front, so that counting a
/// request costs no label hashing.
pub struct RoleMetrics {
    by_class: [IntCounter; 6],
    duration: Histogram,
    in_progress: IntGauge,
    websocket_duration: Histogram,
    websockets_open: IntGauge,
}

impl RoleMetrics {
    pub fn new(role: &str) -> Self {
        RoleMetrics {
            by_class: CODE_CLASSES.map(|class| REQUESTS.with_label_values(&[role, class])),
            duration: REQUEST_DURATION.with_label_values(&[role]),
            in_progress: REQUESTS_IN_PROGRESS.with_label_values(&[role]),
            websocket_duration: WEBSOCKET_DURATION.with_label_values(&[role]),
            websockets_open: WEBSOCKETS_OPEN.with_label_values(&[role]),
        }
    }

    /// Counts a request in `herald_requests_in_progress` until the guard drops.
    pub fn begin(&self) -> InProgress {
        self.in_progress.inc();
        InProgress(self.in_progress.clone())
    }

    /// Counts an upgraded connection in `herald_websockets_open` until the guard drops.
    pub fn websocket_opened(&self) -> OpenWebSocket {
        self.websockets_open.inc();
        OpenWebSocket(self.websockets_open.clone())
    }

    /// Counts a finished request. A WebSocket (status 101) counts as a request too, but its
    /// duration is how long it stayed open, minutes or hours: it goes to its own histogram,
    /// so that the request latencies stay those of requests.
    pub fn observe(&self, status: Option<u16>, elapsed: Duration) {
        let class = status.map_or(0, |s| usize::from(s / 100)).min(5);
        self.by_class[class].inc();
        if status == Some(101) {
            self.websocket_duration.observe(elapsed.as_secs_f64());
        } else {
            self.duration.observe(elapsed.as_secs_f64());
        }
    }
}

static APP_STARTS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "herald_app_starts_total",
        "App starts by result: ok, timeout, failed (broken app or initializer error), refused (misconfigured vassal, or no start slot)",
        &["result"]
    )
    .expect("metric registers once")
});

static APP_START_DURATION: Lazy<Histogram> = Lazy::new(|| {
    register_histogram!(
        "herald_app_start_duration_seconds",
        "Time from a start's first request to its app answering (or the start failing)",
        vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
    )
    .expect("metric registers once")
});

static APP_STARTS_IN_PROGRESS: Lazy<IntGauge> = Lazy::new(|| {
    register_int_gauge!(
        "herald_app_starts_in_progress",
        "App starts holding a start slot now"
    )
    .expect("metric registers once")
});

pub static APP_STOPS: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!("herald_app_stops_total", "Idle apps stopped")
        .expect("metric registers once")
});

pub static APPS_ENABLED: Lazy<IntGauge> = Lazy::new(|| {
    register_int_gauge!(
        "herald_apps_enabled",
        "Sites whose vassal is in the emperor's directory, at the last idle sweep"
    )
    .expect("metric registers once")
});

pub static REQUESTS_WAITED_ON_START: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!(
        "herald_requests_waited_on_start_total",
        "Requests that found their app not running and waited for it to start"
    )
    .expect("metric registers once")
});

pub fn record_start(result: &str, elapsed: Duration) {
    APP_STARTS.with_label_values(&[result]).inc();
    APP_START_DURATION.observe(elapsed.as_secs_f64());
}

/// One request in `herald_requests_in_progress`.
pub struct InProgress(IntGauge);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One upgraded connection in `herald_websockets_open`.
pub struct OpenWebSocket(IntGauge);

impl Drop for OpenWebSocket {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Counts one start in `herald_app_starts_in_progress` for as long as it lives.
pub struct StartInProgress(());

impl StartInProgress {
    pub fn new() -> Self {
        APP_STARTS_IN_PROGRESS.inc();
        StartInProgress(())
    }
}

impl Drop for StartInProgress {
    fn drop(&mut self) {
        APP_STARTS_IN_PROGRESS.dec();
    }
}

/// Registers every metric now, so a scrape shows them at zero before the first event.
static BUFFERED_TO_FILE: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "herald_buffered_to_file_total",
        "Request bodies (what=request) and app answers (what=answer) too large for memory, which went to a temp file",
        &["what"]
    )
    .expect("metric registers once")
});

static BUFFERED_TO_FILE_BYTES: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "herald_buffered_to_file_bytes_total",
        "Bytes of request bodies (what=request) and app answers (what=answer) written to temp files",
        &["what"]
    )
    .expect("metric registers once")
});

static BUFFER_FAILURES: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "herald_buffer_failures_total",
        "Request bodies (what=request) and app answers (what=answer) that failed because a temp file could not be made or written",
        &["what"]
    )
    .expect("metric registers once")
});

/// A request body (`what`: `request`) or an answer (`answer`) goes to a temp file.
pub fn buffered_to_file(what: &str) {
    BUFFERED_TO_FILE.with_label_values(&[what]).inc();
}

/// What a request body or an answer wrote to its temp file, once it is done.
pub fn buffered_to_file_bytes(what: &str, bytes: u64) {
    BUFFERED_TO_FILE_BYTES
        .with_label_values(&[what])
        .inc_by(bytes);
}

pub fn buffer_failed(what: &str) {
    BUFFER_FAILURES.with_label_values(&[what]).inc();
}

static APP_SOCKET_OWNER_MISMATCHES: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!(
        "herald_app_socket_owner_mismatches_total",
        "Connections to an app's socket refused because another user than the site's owner listened there"
    )
    .expect("metric registers once")
});

static TLS_HANDSHAKE_TIMEOUTS: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!(
        "herald_tls_handshake_timeouts_total",
        "TLS connections closed because their handshake did not finish within ssl_handshake_timeout"
    )
    .expect("metric registers once")
});

pub fn tls_handshake_timed_out() {
    TLS_HANDSHAKE_TIMEOUTS.inc();
}

static APP_EVICTIONS: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!(
        "herald_app_evictions_total",
        "Idle apps stopped to make room for a start under max_running_apps"
    )
    .expect("metric registers once")
});

static SITE_SETTINGS_ERRORS: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!(
        "herald_site_settings_errors_total",
        "Site settings files that could not be used when read (their site kept its last good settings, or answered 503)"
    )
    .expect("metric registers once")
});

pub fn site_settings_error() {
    SITE_SETTINGS_ERRORS.inc();
}

pub fn app_evicted() {
    APP_EVICTIONS.inc();
}

pub fn app_socket_owner_mismatch() {
    APP_SOCKET_OWNER_MISMATCHES.inc();
}

pub fn register_all() {
    Lazy::force(&APP_SOCKET_OWNER_MISMATCHES);
    Lazy::force(&TLS_HANDSHAKE_TIMEOUTS);
    Lazy::force(&APP_EVICTIONS);
    Lazy::force(&SITE_SETTINGS_ERRORS);
    for what in ["request", "answer"] {
        BUFFERED_TO_FILE.with_label_values(&[what]);
        BUFFERED_TO_FILE_BYTES.with_label_values(&[what]);
        BUFFER_FAILURES.with_label_values(&[what]);
    }
    Lazy::force(&APP_STARTS);
    Lazy::force(&APP_START_DURATION);
    Lazy::force(&APP_STARTS_IN_PROGRESS);
    Lazy::force(&APP_STOPS);
    Lazy::force(&APPS_ENABLED);
    Lazy::force(&REQUESTS_WAITED_ON_START);
    Lazy::force(&APPS_RUNNING);
    Lazy::force(&BACKENDS_FILE_ERRORS);
    Lazy::force(&ACCESS_LOG_DROPPED);
    Lazy::force(&CONFIG_RELOADS);
    Lazy::force(&UPSTREAM_CONNECT_FAILURES);
    Lazy::force(&BACKEND_REQUESTS);
    Lazy::force(&TLS_HANDSHAKE_RESULTS);
    Lazy::force(&TLS_CERTIFICATES_LOADED);
    Lazy::force(&TLS_CERTIFICATES_INVALID);
    Lazy::force(&TLS_SOONEST_EXPIRY);
}

static BACKEND_UP: Lazy<prometheus::IntGaugeVec> = Lazy::new(|| {
    prometheus::register_int_gauge_vec!(
        "herald_backend_up",
        "Whether the edge sends new requests to this backend (1) or has marked it down (0)",
        &["backend"]
    )
    .expect("metric registers once")
});

static BACKEND_CHANGED: Lazy<prometheus::GaugeVec> = Lazy::new(|| {
    prometheus::register_gauge_vec!(
        "herald_backend_state_changed_timestamp_seconds",
        "When the backend last went up or down (or joined the list), in seconds since the epoch",
        &["backend"]
    )
    .expect("metric registers once")
});

pub static BACKENDS_FILE_ERRORS: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!(
        "herald_backends_file_errors_total",
        "Reads of edge.backends_file that failed or found it invalid (the last good list is kept)"
    )
    .expect("metric registers once")
});

pub static BACKENDS_FILE_VALID: Lazy<IntGauge> = Lazy::new(|| {
    register_int_gauge!(
        "herald_backends_file_valid",
        "1 if the last read of edge.backends_file was valid, 0 if the edge runs on an older list"
    )
    .expect("metric registers once")
});

/// Records a backend's state (up or down) and when it changed.
pub fn set_backend_up(backend: &str, up: bool) {
    BACKEND_UP.with_label_values(&[backend]).set(i64::from(up));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    BACKEND_CHANGED
        .with_label_values(&[backend])
        .set(now.as_secs_f64());
}

/// Drops a backend that left the list from the backend metrics.
pub fn forget_backend(backend: &str) {
    let _ = BACKEND_UP.remove_label_values(&[backend]);
    let _ = BACKEND_CHANGED.remove_label_values(&[backend]);
}

static UPSTREAM_CONNECT_FAILURES: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "herald_upstream_connect_failures_total",
        "Connects to an upstream that failed, by role and reason (not_running, refused, timeout, busy, other)",
        &["role", "reason"]
    )
    .expect("metric registers once")
});

static BACKEND_REQUESTS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "herald_backend_requests_total",
        "Requests the edge sent to each backend (a request retried elsewhere counts for both)",
        &["backend"]
    )
    .expect("metric registers once")
});

static CONFIG_RELOADS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "herald_config_reloads_total",
        "Configuration loads: at start (also after a graceful upgrade) and each change of edge.backends_file, by result",
        &["result"]
    )
    .expect("metric registers once")
});

pub fn upstream_connect_failed(role: &str, reason: &str) {
    UPSTREAM_CONNECT_FAILURES
        .with_label_values(&[role, reason])
        .inc();
}

/// `herald_backend_requests_total`, with each backend's series looked up once rather than
/// per request (a label lookup formats the address and hashes it).
#[derive(Default)]
pub struct BackendRequests {
    by_backend: ArcSwap<HashMap<SocketAddr, IntCounter>>,
}

impl BackendRequests {
    pub fn count(&self, backend: SocketAddr) {
        if let Some(counter) = self.by_backend.load().get(&backend) {
            counter.inc();
            return;
        }
        let counter = BACKEND_REQUESTS.with_label_values(&[&backend.to_string()]);
        counter.inc();
        self.by_backend.rcu(|known| {
            let mut known = HashMap::clone(known);
            known.insert(backend, counter.clone());
            known
        });
    }
}

pub fn config_reloaded(ok: bool) {
    CONFIG_RELOADS
        .with_label_values(&[if ok { "ok" } else { "error" }])
        .inc();
}

/// Build information, registered once at start, with the configuration load that started
/// this process. (The default registry already has the process collector: CPU, memory, open
/// files.)
pub fn register_process() {
    let build_info = prometheus::register_int_gauge_vec!(
        "herald_build_info",
        "Herald's version (always 1)",
        &["version"]
    )
    .expect("metric registers once");
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    config_reloaded(true);
}

pub static ACCESS_LOG_DROPPED: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!(
        "herald_access_log_dropped_total",
        "Access log lines dropped because the writer fell behind"
    )
    .expect("metric registers once")
});

pub static APPS_RUNNING: Lazy<IntGauge> = Lazy::new(|| {
    register_int_gauge!(
        "herald_apps_running",
        "Vassals with a running process, as the emperor's stats server last reported (needs backend.emperor_stats)"
    )
    .expect("metric registers once")
});

static TLS_HANDSHAKES: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "herald_tls_handshakes_total",
        "TLS handshakes on the edge, by result (ok, failed: old protocol, no shared cipher or ALPN protocol, no certificate, not TLS, timeout)",
        &["result"]
    )
    .expect("metric registers once")
});

static TLS_CERTIFICATES_LOADED: Lazy<IntGauge> = Lazy::new(|| {
    register_int_gauge!(
        "herald_tls_certificates_loaded",
        "Certificate pairs the edge serves (certs_dir and the default pair)"
    )
    .expect("metric registers once")
});

static TLS_CERTIFICATES_INVALID: Lazy<IntGauge> = Lazy::new(|| {
    register_int_gauge!(
        "herald_tls_certificates_invalid",
        "Certificate pairs whose files could not be loaded when last read (skipped, or their last good version still served)"
    )
    .expect("metric registers once")
});

static TLS_SOONEST_EXPIRY: Lazy<IntGauge> = Lazy::new(|| {
    register_int_gauge!(
        "herald_tls_certificate_expiry_soonest_timestamp_seconds",
        "The soonest notAfter among the certificates served, in seconds since the epoch (0: none loaded)"
    )
    .expect("metric registers once")
});

/// `herald_tls_handshakes_total` for `failed` and `ok`, looked up once.
static TLS_HANDSHAKE_RESULTS: Lazy<[IntCounter; 2]> =
    Lazy::new(|| ["failed", "ok"].map(|result| TLS_HANDSHAKES.with_label_values(&[result])));

pub fn tls_handshake(ok: bool) {
    TLS_HANDSHAKE_RESULTS[usize::from(ok)].inc();
}

pub fn set_tls_certificates(loaded: usize, invalid: usize, soonest_expiry: Option<i64>) {
    TLS_CERTIFICATES_LOADED.set(i64::try_from(loaded).unwrap_or(i64::MAX));
    TLS_CERTIFICATES_INVALID.set(i64::try_from(invalid).unwrap_or(i64::MAX));
    TLS_SOONEST_EXPIRY.set(soonest_expiry.unwrap_or(0));
}

static CLIENT_CONNECTIONS: Lazy<prometheus::IntGaugeVec> = Lazy::new(|| {
    prometheus::register_int_gauge_vec!(
        "herald_client_connections",
        "Client connections open now, by role (idle keep-alive and half-sent headers included)",
        &["role"]
    )
    .expect("metric registers once")
});

static CLIENT_CONNECTIONS_REFUSED: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "herald_client_connections_refused_total",
        "Client connections closed at once because their address held max_open_connections_per_client",
        &["role"]
    )
    .expect("metric registers once")
});

static CLIENT_HEADER_TIMEOUTS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "herald_client_header_timeouts_total",
        "Client connections closed because a request header did not arrive within client_header_timeout",
        &["role"]
    )
    .expect("metric registers once")
});

/// `herald_client_connections` of `role`.
pub fn open_connections(role: &str) -> IntGauge {
    CLIENT_CONNECTIONS.with_label_values(&[role])
}

/// `herald_client_connections_refused_total` of `role`.
pub fn refused_connections(role: &str) -> IntCounter {
    CLIENT_CONNECTIONS_REFUSED.with_label_values(&[role])
}

/// `herald_client_header_timeouts_total` of `role`.
pub fn header_timeouts(role: &str) -> IntCounter {
    CLIENT_HEADER_TIMEOUTS.with_label_values(&[role])
}

static ACME_ORDERS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "herald_acme_orders_total",
        "ACME orders this edge made, by result (issued, failed)",
        &["result"]
    )
    .expect("metric registers once")
});

static ACME_QUEUED: Lazy<IntGauge> = Lazy::new(|| {
    register_int_gauge!(
        "herald_acme_orders_queued",
        "Approved names waiting for their turn to be ordered (max_orders_per_hour)"
    )
    .expect("metric registers once")
});

static ACME_CERTIFICATES: Lazy<IntGauge> = Lazy::new(|| {
    register_int_gauge!(
        "herald_acme_certificates",
        "Certificates this edge serves from ACME storage"
    )
    .expect("metric registers once")
});

static ACME_SOONEST_RENEWAL: Lazy<IntGauge> = Lazy::new(|| {
    register_int_gauge!(
        "herald_acme_soonest_renewal_timestamp_seconds",
        "When the next ACME certificate is due for renewal (0: none)"
    )
    .expect("metric registers once")
});

static ACME_ASK: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "herald_acme_ask_total",
        "Answers of the ask endpoint, by answer (allowed, denied, error)",
        &["answer"]
    )
    .expect("metric registers once")
});

static ACME_STORAGE_ERRORS: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!(
        "herald_acme_storage_errors_total",
        "Failed calls to ACME storage (Redis or the directory)"
    )
    .expect("metric registers once")
});

/// The ACME series exist (at zero) from the start, so dashboards and alerts see them.
pub fn acme_enabled() {
    for result in ["issued", "failed"] {
        ACME_ORDERS.with_label_values(&[result]);
    }
    for answer in ["allowed", "denied", "error"] {
        ACME_ASK.with_label_values(&[answer]);
    }
    Lazy::force(&ACME_QUEUED);
    Lazy::force(&ACME_CERTIFICATES);
    Lazy::force(&ACME_SOONEST_RENEWAL);
    Lazy::force(&ACME_STORAGE_ERRORS);
}

pub fn acme_order(result: &str) {
    ACME_ORDERS.with_label_values(&[result]).inc();
}

pub fn acme_queued(delta: i64) {
    ACME_QUEUED.add(delta);
}

pub fn acme_certificates(count: usize, soonest_renewal: Option<i64>) {
    ACME_CERTIFICATES.set(i64::try_from(count).unwrap_or(i64::MAX));
    ACME_SOONEST_RENEWAL.set(soonest_renewal.unwrap_or(0));
}

pub fn acme_ask(answer: &str) {
    ACME_ASK.with_label_values(&[answer]).inc();
}

pub fn acme_storage_error() {
    ACME_STORAGE_ERRORS.inc();
}
