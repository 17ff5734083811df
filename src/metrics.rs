//! Every Prometheus metric Herald exports, registered once in the default registry that
//! pingora-prometheus serves.

use once_cell::sync::Lazy;
use prometheus::{
    register_histogram_vec, register_int_counter_vec, Histogram, HistogramVec, IntCounter,
    IntCounterVec,
};
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

const CODE_CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// A role's request metrics with their label values resolved up front, so that counting a
/// request costs no label hashing.
pub struct RoleMetrics {
    by_class: [IntCounter; 6],
    duration: Histogram,
}

impl RoleMetrics {
    pub fn new(role: &str) -> Self {
        RoleMetrics {
            by_class: CODE_CLASSES.map(|class| REQUESTS.with_label_values(&[role, class])),
            duration: REQUEST_DURATION.with_label_values(&[role]),
        }
    }

    pub fn observe(&self, status: Option<u16>, elapsed: Duration) {
        let class = status.map_or(0, |s| usize::from(s / 100)).min(5);
        self.by_class[class].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}
