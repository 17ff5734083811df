//! One certificate pair: `NAME.crt` (the certificate, then its intermediates, PEM) and
//! `NAME.key` (its private key, PEM: PKCS#8, PKCS#1 or SEC1), loaded and checked into what
//! rustls serves, with the DNS names the certificate carries and when it expires.

use pingora::tls::sign::CertifiedKey;
use pingora::tls::{CertificateDer, CryptoProvider, PrivateKeyDer, RusTlsError};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

/// Where a pair's two files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A pair that loaded: the key matches the certificate, and rustls can sign with it.
pub struct LoadedPair {
    pub certified: Arc<CertifiedKey>,
    /// The certificate's DNS subjectAltNames, lowercased, without a trailing dot; wildcards
    /// only as a whole first label (`*.example.com`).
    pub names: Vec<String>,
    /// The certificate's notBefore and notAfter, in seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// The same, as the certificate writes it, for messages.
    pub not_after_text: String,
}

impl fmt::Debug for LoadedPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedPair")
            .field("names", &self.names)
            .field("not_after", &self.not_after_text)
            .finish_non_exhaustive()
    }
}

/// Why a pair cannot be served: the file at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairProblem {
    pub file: PathBuf,
    pub reason: String,
}

impl fmt::Display for PairProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.reason)
    }
}

impl PairProblem {
    fn new(file: &Path, reason: impl Into<String>) -> Self {
        PairProblem {
            file: file.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Reads and checks both files of a pair.
pub fn load_pair(paths: &PairPaths) -> Result<LoadedPair, PairProblem> {
    let cert = read_file(&paths.cert)?;
    let key = read_file(&paths.key)?;
    pair_from_pem(&cert, &key, paths)
}

/// Checks a pair held in memory (`paths` name where it came from, for messages).
pub fn pair_from_pem(
    cert: &[u8],
    key: &[u8],
    paths: &PairPaths,
) -> Result<LoadedPair, PairProblem> {
    let chain = read_chain(cert, &paths.cert)?;
    let key = read_key(key, &paths.key)?;
    let leaf = x509_parser::parse_x509_certificate(chain[0].as_ref())
        .map_err(|e| PairProblem::new(&paths.cert, format!("not a valid X.509 certificate: {e}")))?
        .1;
    let names = dns_names(&leaf).map_err(|reason| PairProblem::new(&paths.cert, reason))?;
    let not_before = leaf.validity().not_before.timestamp();
    let not_after = leaf.validity().not_after;
    // Loading happens before any listener is built, and rustls needs a provider to parse keys
    // (installing it again is a no-op).
    pingora::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default()
        .ok_or_else(|| PairProblem::new(&paths.key, "no TLS crypto provider"))?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| PairProblem::new(&paths.key, format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    // Compares the key's public half with the certificate's (every key type ring loads
    // has one; a key without one could not be checked, as rustls itself allows).
    let checkable = certified.key.public_key().is_some();
    match certified.keys_match() {
        Ok(()) => {}
        Err(RusTlsError::InconsistentKeys(_)) if !checkable => {}
        Err(RusTlsError::InconsistentKeys(_)) => {
            return Err(PairProblem::new(
                &paths.key,
                format!(
                    "this private key does not belong to the certificate in {}",
                    paths.cert.display()
                ),
            ))
        }
        Err(e) => {
            return Err(PairProblem::new(
                &paths.cert,
                format!("unusable certificate: {e}"),
            ))
        }
    }
    Ok(LoadedPair {
        certified: Arc::new(certified),
        names,
        not_before,
        not_after: not_after.timestamp(),
        not_after_text: not_after.to_string(),
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>, PairProblem> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => PairProblem::new(path, "missing"),
        _ => PairProblem::new(path, format!("cannot read it: {e}")),
    })
}

fn pem_blocks(bytes: &[u8], path: &Path) -> Result<Vec<Pem>, PairProblem> {
    Pem::iter_from_buffer(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PairProblem::new(path, format!("not valid PEM: {e}")))
}

/// The certificate first, then its intermediates, as the file lists them.
fn read_chain(bytes: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, PairProblem> {
    let chain: Vec<CertificateDer<'static>> = pem_blocks(bytes, path)?
        .into_iter()
        .filter(|pem| pem.label == "CERTIFICATE")
        .map(|pem| CertificateDer::from(pem.contents))
        .collect();
    if chain.is_empty() {
        return Err(PairProblem::new(
            path,
            "no certificate in it (expected -----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(chain)
}

fn read_key(bytes: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, PairProblem> {
    let blocks = pem_blocks(bytes, path)?;
    let mut keys = blocks
        .into_iter()
        .filter_map(|pem| match pem.label.as_str() {
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" | "ENCRYPTED PRIVATE KEY" => {
                Some(pem)
            }
            _ => None,
        });
    let Some(pem) = keys.next() else {
        return Err(PairProblem::new(
            path,
            "no private key in it (expected -----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)",
        ));
    };
    let key = match pem.label.as_str() {
        "ENCRYPTED PRIVATE KEY" => {
            return Err(PairProblem::new(
                path,
                "the private key is encrypted; Herald needs it unencrypted (openssl pkey -in KEY -out KEY.plain)",
            ))
        }
        "RSA PRIVATE KEY" => PrivateKeyDer::Pkcs1(pem.contents.into()),
        "EC PRIVATE KEY" => PrivateKeyDer::Sec1(pem.contents.into()),
        _ => PrivateKeyDer::Pkcs8(pem.contents.into()),
    };
    if keys.next().is_some() {
        return Err(PairProblem::new(
            path,
            "more than one private key in it; keep one per file",
        ));
    }
    Ok(key)
}

/// The DNS names a certificate is valid for, as browsers read them: its subjectAltNames
/// (never its common name).
fn dns_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<Vec<String>, String> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("unreadable subjectAltName extension: {e}"))?;
    let mut names = Vec::new();
    for name in san.iter().flat_map(|san| san.value.general_names.iter()) {
        if let GeneralName::DNSName(name) = name {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            // A wildcard only as a whole first label counts (`*.example.com`); browsers
            // ignore partial ones like `w*.example.com`.
            let wildcard_ok = match name.strip_prefix("*.") {
                Some(rest) => !rest.contains('*') && rest.contains('.'),
                None => !name.contains('*'),
            };
            if wildcard_ok && !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    Ok(names)
}
