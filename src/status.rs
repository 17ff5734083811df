//! The operator's status page, on the metrics listener only: `GET /status` (server-rendered
//! HTML that refreshes itself, no JavaScript) and `GET /status.json`; any other path is the
//! Prometheus text, as before. The numbers are Herald's own metrics (one source with
//! /metrics); the lists come from what the roles register: the edge its soonest-expiring
//! certificates, the backend its recent starts, broken apps and start queue. Site names are
//! shown; nothing else of a site.

use async_trait::async_trait;
use once_cell::sync::{Lazy, OnceCell};
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;
use prometheus::proto::MetricFamily;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How many of the soonest-expiring certificates the page lists.
pub const CERTIFICATES_LISTED: usize = 5;
/// The page reloads itself this often.
const REFRESH_SECONDS: u32 = 10;

/// One app start, as the status page lists it.
#[derive(Debug, Clone)]
pub struct StartRecord {
    pub site: String,
    /// `ok`, `timeout`, `failed` or `refused`, as `herald_app_starts_total` counts it.
    pub result: &'static str,
    pub took: Duration,
    pub at: SystemTime,
}

/// What the backend's starter tells the page.
pub trait Starts: Send + Sync {
    fn queued(&self) -> usize;
    /// Sites whose last start failed, with the result and how long until they are tried again.
    fn broken(&self) -> Vec<(String, &'static str, Duration)>;
    fn recent(&self) -> Vec<StartRecord>;
}

static STARTED: Lazy<SystemTime> = Lazy::new(SystemTime::now);
static STARTS: OnceCell<Arc<dyn Starts>> = OnceCell::new();
static CERTIFICATES: Mutex<Option<Vec<(String, i64)>>> = Mutex::new(None);

/// Marks the process's start (for the uptime).
pub fn mark_start() {
    Lazy::force(&STARTED);
}

pub fn register_starts(starts: Arc<dyn Starts>) {
    let _ = STARTS.set(starts);
}

/// The pairs that expire first (name, notAfter), whenever the edge's certificates change.
pub fn set_certificates(soonest: Vec<(String, i64)>) {
    *CERTIFICATES.lock().expect("never poisoned") = Some(soonest);
}

/// The samples of `name` as (labels, value); counters and gauges only.
fn samples(families: &[MetricFamily], name: &str) -> Vec<(Vec<(String, String)>, f64)> {
    families
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric())
        .map(|metric| {
            let labels = metric
                .get_label()
                .iter()
                .map(|label| (label.name().to_owned(), label.value().to_owned()))
                .collect();
            let value = if metric.get_counter().is_some() {
                metric.get_counter().value()
            } else {
                metric.get_gauge().value()
            };
            (labels, value)
        })
        .collect()
}

fn total(families: &[MetricFamily], name: &str) -> f64 {
    samples(families, name).iter().map(|(_, value)| value).sum()
}

fn label<'a>(labels: &'a [(String, String)], name: &str) -> &'a str {
    labels
        .iter()
        .find(|(key, _)| key == name)
        .map_or("", |(_, value)| value.as_str())
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// Everything the page shows, as `/status.json` gives it.
pub fn snapshot(edge: bool, backend: bool) -> Value {
    let families = prometheus::gather();
    let now = SystemTime::now();
    let by_result = |name: &str| {
        let mut counts = serde_json::Map::new();
        for (labels, value) in samples(&families, name) {
            counts.insert(label(&labels, "result").to_owned(), json!(value as u64));
        }
        Value::Object(counts)
    };
    let mut status = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "started_unix": unix(*STARTED),
        "uptime_seconds": now.duration_since(*STARTED).unwrap_or_default().as_secs(),
        "config_loads": by_result("herald_config_reloads_total"),
    });
    if edge {
        let changed = samples(&families, "herald_backend_state_changed_timestamp_seconds");
        let mut backends: Vec<Value> = samples(&families, "herald_backend_up")
            .into_iter()
            .map(|(labels, up)| {
                let address = label(&labels, "backend").to_owned();
                let since = changed
                    .iter()
                    .find(|(l, _)| label(l, "backend") == address)
                    .map(|(_, t)| *t as u64);
                json!({"backend": address, "up": up == 1.0, "changed_unix": since})
            })
            .collect();
        backends.sort_by_key(|b| b["backend"].as_str().unwrap_or_default().to_owned());
        let soonest = CERTIFICATES.lock().expect("never poisoned").clone();
        status["edge"] = json!({
            "backends": backends,
            "certificates_loaded": total(&families, "herald_tls_certificates_loaded") as u64,
            "certificates_invalid": total(&families, "herald_tls_certificates_invalid") as u64,
            "certificates_expiring_soonest": soonest.unwrap_or_default().into_iter()
                .map(|(name, not_after)| json!({"name": name, "not_after_unix": not_after}))
                .collect::<Vec<_>>(),
        });
    }
    if backend {
        let starts = STARTS.get();
        status["backend"] = json!({
            "apps_enabled": total(&families, "herald_apps_enabled") as u64,
            // The emperor's own count, with `emperor_stats` (0 without).
            "apps_running": total(&families, "herald_apps_running") as u64,
            "apps_starting": total(&families, "herald_app_starts_in_progress") as u64,
            "starts_queued": starts.map_or(0, |s| s.queued()),
            "evictions": total(&families, "herald_app_evictions_total") as u64,
            "idle_stops": total(&families, "herald_app_stops_total") as u64,
            "starts": by_result("herald_app_starts_total"),
            "broken": starts.map(|s| s.broken()).unwrap_or_default().into_iter()
                .map(|(site, result, retry_in)| json!({"site": site, "result": result, "retry_in_seconds": retry_in.as_secs()}))
                .collect::<Vec<_>>(),
            "recent_starts": starts.map(|s| s.recent()).unwrap_or_default().into_iter().rev()
                .map(|r| json!({"site": r.site, "result": r.result, "took_ms": r.took.as_millis() as u64, "at_unix": unix(r.at)}))
                .collect::<Vec<_>>(),
        });
    }
    status
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `1733220000` -> `2024-12-03 10:00:00 UTC`.
fn date(unix: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(unix);
    format!(
        "{} UTC",
        crate::access_log::error_log_time(t).replace('/', "-")
    )
}

fn table(headers: &[&str], rows: Vec<Vec<String>>, empty: &str) -> String {
    if rows.is_empty() {
        return format!("<p class=\"none\">{}</p>\n", escape(empty));
    }
    let mut html = String::from("<table>\n<tr>");
    for header in headers {
        html.push_str(&format!("<th>{}</th>", escape(header)));
    }
    html.push_str("</tr>\n");
    for row in rows {
        html.push_str("<tr>");
        for cell in row {
            html.push_str(&format!("<td>{}</td>", escape(&cell)));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n");
    html
}

fn number(value: &Value) -> String {
    value.as_u64().map_or_else(|| "0".into(), |n| n.to_string())
}

fn counts(value: &Value) -> String {
    let Some(map) = value.as_object().filter(|m| !m.is_empty()) else {
        return "none".into();
    };
    map.iter()
        .map(|(key, count)| format!("{key} {}", number(count)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The page: the same facts as `snapshot`, as tables, with a `data-field` on each value the
/// tests compare with the JSON.
pub fn html(status: &Value) -> String {
    let mut body = format!(
        "<h1>Herald {}</h1>\n<p>Up <span data-field=\"uptime_seconds\">{}</span> s, since {}. Configuration loads: <span data-field=\"config_loads\">{}</span>.</p>\n",
        escape(status["version"].as_str().unwrap_or_default()),
        number(&status["uptime_seconds"]),
        date(status["started_unix"].as_u64().unwrap_or_default()),
        escape(&counts(&status["config_loads"])),
    );
    if let Some(edge) = status.get("edge") {
        let backends = edge["backends"].as_array().cloned().unwrap_or_default();
        let rows = backends
            .iter()
            .map(|b| {
                vec![
                    b["backend"].as_str().unwrap_or_default().to_owned(),
                    if b["up"].as_bool() == Some(true) {
                        "up"
                    } else {
                        "DOWN"
                    }
                    .to_owned(),
                    b["changed_unix"].as_u64().map_or_else(|| "-".into(), date),
                ]
            })
            .collect();
        body.push_str("<h2>Edge</h2>\n<h3>Backends</h3>\n");
        body.push_str(&table(&["backend", "state", "since"], rows, "No backends."));
        let certificates = edge["certificates_expiring_soonest"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        body.push_str(&format!(
            "<h3>Certificates</h3>\n<p><span data-field=\"certificates_loaded\">{}</span> served, <span data-field=\"certificates_invalid\">{}</span> skipped. Expiring first:</p>\n",
            number(&edge["certificates_loaded"]),
            number(&edge["certificates_invalid"]),
        ));
        let rows = certificates
            .iter()
            .map(|c| {
                vec![
                    c["name"].as_str().unwrap_or_default().to_owned(),
                    date(c["not_after_unix"].as_i64().unwrap_or_default().max(0) as u64),
                ]
            })
            .collect();
        body.push_str(&table(&["name", "expires"], rows, "No certificates."));
    }
    if let Some(backend) = status.get("backend") {
        body.push_str(&format!(
            "<h2>Backend</h2>\n<p>Apps enabled: <span data-field=\"apps_enabled\">{}</span>; running (the emperor's count, with emperor_stats): <span data-field=\"apps_running\">{}</span>; starting: <span data-field=\"apps_starting\">{}</span>; starts queued: <span data-field=\"starts_queued\">{}</span>; evictions: <span data-field=\"evictions\">{}</span>; idle stops: <span data-field=\"idle_stops\">{}</span>. Starts: <span data-field=\"starts\">{}</span>.</p>\n",
            number(&backend["apps_enabled"]),
            number(&backend["apps_running"]),
            number(&backend["apps_starting"]),
            number(&backend["starts_queued"]),
            number(&backend["evictions"]),
            number(&backend["idle_stops"]),
            escape(&counts(&backend["starts"])),
        ));
        let rows = backend["broken"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|b| {
                vec![
                    b["site"].as_str().unwrap_or_default().to_owned(),
                    b["result"].as_str().unwrap_or_default().to_owned(),
                    format!("{} s", number(&b["retry_in_seconds"])),
                ]
            })
            .collect();
        body.push_str("<h3>Broken apps</h3>\n");
        body.push_str(&table(
            &["site", "last start", "tried again in"],
            rows,
            "None.",
        ));
        let rows = backend["recent_starts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|r| {
                vec![
                    r["site"].as_str().unwrap_or_default().to_owned(),
                    r["result"].as_str().unwrap_or_default().to_owned(),
                    format!("{} ms", number(&r["took_ms"])),
                    date(r["at_unix"].as_u64().unwrap_or_default()),
                ]
            })
            .collect();
        body.push_str("<h3>Recent starts</h3>\n");
        body.push_str(&table(&["site", "result", "took", "at"], rows, "None yet."));
    }
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\"><title>Herald status</title>\n<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:left}}.none{{color:#666}}</style></head>\n<body>\n{body}<p class=\"none\">Refreshes every {REFRESH_SECONDS} s. <a href=\"/status.json\">JSON</a> · <a href=\"/metrics\">metrics</a></p>\n</body></html>\n"
    )
}

/// The metrics listener's application: the status page, or the Prometheus text.
struct OperatorApp {
    metrics: pingora_prometheus::PrometheusHttpApp,
    edge: bool,
    backend: bool,
}

#[async_trait]
impl ServeHttp for OperatorApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let (body, content_type) = match session.req_header().uri.path() {
            "/status" => (
                html(&snapshot(self.edge, self.backend)),
                "text/html; charset=utf-8",
            ),
            "/status.json" => (
                snapshot(self.edge, self.backend).to_string(),
                "application/json",
            ),
            _ => return self.metrics.response(session).await,
        };
        http::Response::builder()
            .status(200)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::CONTENT_LENGTH, body.len())
            .header(http::header::CACHE_CONTROL, "no-store")
            .body(body.into_bytes())
            .expect("a valid response")
    }
}

/// The metrics listener's service: what `pingora_prometheus::prometheus_http_service` serves
/// (the text, gzip on request), plus the status page.
pub fn service(edge: bool, backend: bool) -> Service<HttpServer<impl ServeHttp>> {
    let app = OperatorApp {
        metrics: pingora_prometheus::PrometheusHttpApp,
        edge,
        backend,
    };
    let mut server = HttpServer::new_app(app);
    server.add_module(pingora::modules::http::compression::ResponseCompressionBuilder::enable(7));
    Service::new("Prometheus metric HTTP".to_string(), server)
}
