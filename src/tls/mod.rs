//! TLS termination on the edge (rustls, TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`): the
//! certificate for each handshake is picked by SNI from the pairs in `certs_dir` (`store`,
//! `resolver`), which are re-read as they change (`watch`), and handshakes are counted
//! (`handshakes`).

pub mod certs;
pub mod handshakes;
mod resolver;
pub mod store;
mod watch;

use crate::config::TlsConfig;
use crate::metrics;
use log::info;
use pingora::listeners::tls::TlsSettings;
use pingora::services::background::GenBackgroundService;
use pingora::services::listening::Service;
pub use resolver::SniResolver;
use std::path::Path;
use std::sync::{Arc, Mutex};
pub use watch::CertWatcher;

/// What picks each handshake's certificate: the operator's pairs as configured, and
/// certificates ordered on demand if `acme` is set.
pub fn resolver(config: &TlsConfig, acme: Option<Arc<crate::acme::Acme>>) -> Arc<SniResolver> {
    Arc::new(SniResolver::new(config.certificates.index(), acme))
}

/// Adds the TLS listeners to `service`, with `before_handshake` run on each connection from its
/// accept and `resolver` picking certificates; the returned service keeps the operator's
/// certificates current.
pub fn listen<A>(
    service: &mut Service<A>,
    config: &TlsConfig,
    resolver: Arc<SniResolver>,
    before_handshake: Arc<dyn pingora::listeners::PreTlsProcess>,
) -> GenBackgroundService<CertWatcher> {
    service.endpoints().set_pre_tls_callback(before_handshake);
    let store = config.certificates.clone();
    let summary = store.summary();
    publish(summary);
    crate::status::set_certificates(store.soonest(crate::status::CERTIFICATES_LISTED));
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
            certs_dir: store.dir().map(Path::to_owned),
            store: Arc::new(Mutex::new(store)),
            resolver,
        }),
    )
}

pub(super) fn publish(summary: store::Summary) {
    metrics::set_tls_certificates(summary.loaded, summary.invalid, summary.soonest_expiry);
}
