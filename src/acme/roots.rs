//! Which ACME servers Herald trusts: the system's roots, and `ca_roots` beside them (a private
//! ACME server, or Pebble in the tests).

use pingora::tls::{CertificateDer, ClientConfig, RootCertStore};
use std::path::Path;
use x509_parser::pem::Pem;

/// Every certificate in a PEM file.
pub fn read_pem_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    Pem::iter_from_buffer(&bytes)
        .filter(|pem| pem.as_ref().map_or(true, |pem| pem.label == "CERTIFICATE"))
        .map(|pem| {
            pem.map(|pem| CertificateDer::from(pem.contents))
                .map_err(|e| format!("not valid PEM: {e}"))
        })
        .collect()
}

/// A TLS client configuration for the ACME server.
pub fn client_config(extra: Option<&Path>) -> Result<ClientConfig, String> {
    pingora::tls::install_default_crypto_provider();
    let mut roots = RootCertStore::empty();
    // Unreadable system certificates are skipped, as every client does.
    if let Ok(system) = pingora::tls::load_native_certs() {
        roots.add_parsable_certificates(system);
    }
    if let Some(path) = extra {
        for root in read_pem_roots(path)? {
            roots
                .add(root)
                .map_err(|e| format!("{}: unusable root: {e}", path.display()))?;
        }
    }
    Ok(ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}
