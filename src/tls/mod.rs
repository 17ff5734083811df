//! TLS termination on the edge (rustls, TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`): the
//! certificate for each handshake is picked by SNI from the pairs in `certs_dir` (`store`,
//! `resolver`), which are re-read while Herald runs (`CertWatcher`), and handshakes are counted
//! (`handshakes`).

pub mod certs;
pub mod handshakes;
mod resolver;
pub mod store;

use crate::config::TlsConfig;
use crate::metrics;
use async_trait::async_trait;
use log::{info, warn};
use pingora::listeners::tls::TlsSettings;
use pingora::server::ShutdownWatch;
use pingora::services::background::{BackgroundService, GenBackgroundService};
use pingora::services::listening::Service;
use resolver::SniResolver;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::CertStore;

/// How often `certs_dir` (and the default pair) are checked for changes.
const RESCAN_INTERVAL: Duration = Duration::from_secs(1);

/// Adds the TLS listeners to `service`, with `before_handshake` run on each connection from its
/// accept; the returned service keeps their certificates current.
pub fn listen<A>(
    service: &mut Service<A>,
    config: &TlsConfig,
    before_handshake: Arc<dyn pingora::listeners::PreTlsProcess>,
) -> GenBackgroundService<CertWatcher> {
    service.endpoints().set_pre_tls_callback(before_handshake);
    let store = config.certificates.clone();
    let resolver = Arc::new(SniResolver::new(store.index()));
    let summary = store.summary();
    publish(summary);
    info!(
        "edge: TLS on {:?}, {} certificates{}",
        config.listen,
        summary.loaded,
        if summary.invalid > 0 {
            format!(", {} pairs skipped", summary.invalid)
        } else {
            String::new()
        }
    );
    for addr in &config.listen {
        let mut settings = TlsSettings::with_callbacks(Box::new(handshakes::HandshakeObserver))
            .expect("TLS settings without files cannot fail");
        settings.set_cert_resolver(resolver.clone());
        settings.enable_h2();
        service.add_tls_with_settings(&addr.to_string(), None, settings);
    }
    GenBackgroundService::new(
        "herald edge certificates".into(),
        Arc::new(CertWatcher {
            store: Arc::new(Mutex::new(store)),
            resolver,
        }),
    )
}

/// Re-reads changed certificate files every second and swaps the resolver's index.
pub struct CertWatcher {
    store: Arc<Mutex<CertStore>>,
    resolver: Arc<SniResolver>,
}

impl CertWatcher {
    async fn rescan(&self) {
        let store = self.store.clone();
        let rescanned = tokio::task::spawn_blocking(move || {
            let mut store = store.lock().expect("certificate store lock");
            let events = store.rescan();
            let update = (!events.is_empty()).then(|| (store.index(), store.summary()));
            (events, update)
        })
        .await;
        let Ok((events, update)) = rescanned else {
            return;
        };
        for event in &events {
            if event.is_problem() {
                warn!("{event}");
            } else {
                info!("{event}");
            }
        }
        if let Some((index, summary)) = update {
            self.resolver.replace(index);
            publish(summary);
        }
    }
}

#[async_trait]
impl BackgroundService for CertWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(RESCAN_INTERVAL) => self.rescan().await,
            }
        }
    }
}

fn publish(summary: store::Summary) {
    metrics::set_tls_certificates(summary.loaded, summary.invalid, summary.soonest_expiry);
}
