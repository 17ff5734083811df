//! Active health checks of the backends (Pingora's TCP or HTTP check), with every change of
//! state logged once, with its reason, and shown in the metrics.

use crate::config::{HealthCheckConfig, HealthCheckKind};
use crate::metrics;
use async_trait::async_trait;
use log::{info, warn};
use pingora::http::ResponseHeader;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::Backend;
use pingora::prelude::*;
use std::collections::HashMap;
use std::sync::Mutex;

pub struct ObservedHealthCheck {
    inner: Box<dyn HealthCheck + Send + Sync>,
    /// The latest failure per backend: the reason logged when it goes down.
    last_failure: Mutex<HashMap<String, String>>,
}

impl ObservedHealthCheck {
    pub fn new(config: &HealthCheckConfig) -> Self {
        let inner: Box<dyn HealthCheck + Send + Sync> = match &config.kind {
            HealthCheckKind::Tcp => {
                let mut check = TcpHealthCheck::new();
                check.consecutive_failure = config.failures;
                check.consecutive_success = config.successes;
                check.peer_template.options.connection_timeout = Some(config.timeout);
                check
            }
            HealthCheckKind::Http { path, host, expect } => {
                let mut check = HttpHealthCheck::new(host, false);
                check.consecutive_failure = config.failures;
                check.consecutive_success = config.successes;
                check.peer_template.options.connection_timeout = Some(config.timeout);
                check.peer_template.options.read_timeout = Some(config.timeout);
                check
                    .req
                    .set_uri(http::Uri::try_from(path.as_str()).expect("validated path"));
                let expect = *expect;
                check.validator = Some(Box::new(move |resp: &ResponseHeader| {
                    if resp.status.as_u16() == expect {
                        Ok(())
                    } else {
                        Error::e_explain(
                            CustomCode("unexpected status", resp.status.as_u16()),
                            format!("answered {} instead of {expect}", resp.status.as_u16()),
                        )
                    }
                }));
                Box::new(check)
            }
        };
        ObservedHealthCheck {
            inner,
            last_failure: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl HealthCheck for ObservedHealthCheck {
    async fn check(&self, target: &Backend) -> Result<()> {
        let result = self.inner.check(target).await;
        if let Err(e) = &result {
            self.last_failure
                .lock()
                .expect("failure lock")
                .insert(target.addr.to_string(), e.to_string());
        }
        result
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        let backend = target.addr.to_string();
        metrics::set_backend_up(&backend, healthy);
        if healthy {
            info!(
                "backend {backend} is up: it passed {} checks in a row",
                self.inner.health_threshold(true)
            );
        } else {
            let reason = self
                .last_failure
                .lock()
                .expect("failure lock")
                .get(&backend)
                .cloned()
                .unwrap_or_default();
            warn!(
                "backend {backend} is down: it failed {} checks in a row; last: {reason}",
                self.inner.health_threshold(false)
            );
        }
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.inner.health_threshold(success)
    }
}
