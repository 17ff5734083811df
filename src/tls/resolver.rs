//! Which certificate a handshake gets: by the SNI name, an exact name first, then a wildcard
//! for one label (`*.example.com` serves `a.example.com`, not `a.b.example.com` nor
//! `example.com`), then the default certificate. One map lookup or two per handshake; the
//! index is replaced whole when certificates change.

use super::certs::LoadedPair;
use crate::acme::Acme;
use arc_swap::ArcSwap;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, ResolvesServerCert};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// What a certificate is indexed by: the names it carries and when it expires.
pub struct Entry<'a, T> {
    pub names: &'a [String],
    pub not_after: i64,
    pub value: T,
}

impl<'a> From<&'a LoadedPair> for Entry<'a, Arc<CertifiedKey>> {
    fn from(pair: &'a LoadedPair) -> Self {
        Entry {
            names: &pair.names,
            not_after: pair.not_after,
            value: pair.certified.clone(),
        }
    }
}

/// Certificates (`T`) by name.
pub struct NameIndex<T> {
    exact: HashMap<String, T>,
    /// `*.example.com` is kept under `example.com`.
    wildcard: HashMap<String, T>,
    default: Option<T>,
}

pub type CertIndex = NameIndex<Arc<CertifiedKey>>;

impl<T: Clone> NameIndex<T> {
    /// Indexes the default and `entries` by the names they carry. When two certificates
    /// carry the same name, the one that expires last serves it (a renewed certificate next
    /// to the old one); on a tie, the earlier one.
    pub fn build<'a>(
        default: Option<Entry<'a, T>>,
        entries: impl Iterator<Item = Entry<'a, T>>,
    ) -> Self {
        let mut exact: HashMap<String, (i64, T)> = HashMap::new();
        let mut wildcard: HashMap<String, (i64, T)> = HashMap::new();
        let default_value = default.as_ref().map(|entry| entry.value.clone());
        for entry in default.into_iter().chain(entries) {
            for name in entry.names {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut wildcard, parent),
                    None => (&mut exact, name.as_str()),
                };
                match map.get(key) {
                    Some((held, _)) if *held >= entry.not_after => {}
                    _ => {
                        map.insert(key.to_owned(), (entry.not_after, entry.value.clone()));
                    }
                }
            }
        }
        let values = |map: HashMap<String, (i64, T)>| {
            map.into_iter()
                .map(|(name, (_, value))| (name, value))
                .collect()
        };
        NameIndex {
            exact: values(exact),
            wildcard: values(wildcard),
            default: default_value,
        }
    }

    /// The certificate for `server_name` (as rustls hands it over: lowercased), or the
    /// default one.
    pub fn lookup(&self, server_name: Option<&str>) -> Option<T> {
        server_name
            .and_then(|name| self.by_name(name.strip_suffix('.').unwrap_or(name)))
            .or_else(|| self.default.clone())
    }

    /// Whether a certificate of its own (not the default) carries `name`.
    pub fn covers(&self, name: &str) -> bool {
        self.by_name(name).is_some()
    }

    fn has_exact(&self, name: &str) -> bool {
        self.exact.contains_key(name)
    }

    fn by_name(&self, name: &str) -> Option<T> {
        if let Some(value) = self.exact.get(name) {
            return Some(value.clone());
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent).cloned()
    }
}

/// What rustls asks for a certificate on every handshake: the operator's certificate for the
/// exact name, else one ordered on demand (`acme`), else the operator's wildcard, else the
/// default.
pub struct SniResolver {
    index: ArcSwap<CertIndex>,
    acme: Option<Arc<Acme>>,
}

impl SniResolver {
    pub fn new(index: CertIndex, acme: Option<Arc<Acme>>) -> Self {
        SniResolver {
            index: ArcSwap::from_pointee(index),
            acme,
        }
    }

    /// Whether the operator's certificates (not the default) cover `name`: no order for it.
    pub fn covers(&self, name: &str) -> bool {
        self.index.load().covers(name)
    }

    /// Handshakes from now on use `index`; those under way finish with the one they have.
    pub fn replace(&self, index: CertIndex) {
        self.index.store(Arc::new(index));
    }
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let index = self.index.load();
        f.debug_struct("SniResolver")
            .field("exact_names", &index.exact.len())
            .field("wildcard_names", &index.wildcard.len())
            .field("default", &index.default.is_some())
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    /// `None` (no name matched and no default) makes rustls end the handshake with an
    /// `access_denied` alert.
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let index = self.index.load();
        let name = client_hello.server_name();
        if let (Some(acme), Some(name)) = (&self.acme, name) {
            let name = name.strip_suffix('.').unwrap_or(name);
            if !index.has_exact(name) {
                if let Some(certified) = acme.certificate(name) {
                    return Some(certified);
                }
            }
        }
        index.lookup(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u8, names: &[String], not_after: i64) -> Entry<'_, u8> {
        Entry {
            names,
            not_after,
            value: id,
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn exact_names_win_and_a_wildcard_covers_one_label() {
        let (d, a, w, aw) = (
            names(&["default.example"]),
            names(&["a.example.com", "www.a.example.com"]),
            names(&["*.example.com"]),
            names(&["*.a.example.com"]),
        );
        let entries = || [entry(1, &a, 100), entry(2, &w, 100), entry(3, &aw, 100)];
        let index = NameIndex::build(Some(entry(0, &d, 100)), entries().into_iter());
        for (name, served) in [
            (Some("a.example.com"), Some(1)),
            (Some("a.example.com."), Some(1)),
            (Some("www.a.example.com"), Some(1)),
            (Some("x.example.com"), Some(2)),
            (Some("x.a.example.com"), Some(3)),
            (Some("x.y.example.com"), Some(0)),
            (Some("example.com"), Some(0)),
            (Some("default.example"), Some(0)),
            (Some("unknown.test"), Some(0)),
            (None, Some(0)),
        ] {
            assert_eq!(index.lookup(name), served, "{name:?}");
        }
        let without_default = NameIndex::build(None, entries().into_iter());
        assert_eq!(without_default.lookup(Some("unknown.test")), None);
        assert_eq!(without_default.lookup(None), None);
    }

    #[test]
    fn the_certificate_that_expires_last_serves_a_shared_name() {
        let (a, ab, b) = (
            names(&["a.example"]),
            names(&["a.example", "b.example"]),
            names(&["b.example"]),
        );
        let entries = [entry(1, &a, 100), entry(2, &ab, 200), entry(3, &b, 200)];
        let index = NameIndex::build(None, entries.into_iter());
        assert_eq!(index.lookup(Some("a.example")), Some(2));
        assert_eq!(
            index.lookup(Some("b.example")),
            Some(2),
            "a tie keeps the first"
        );
    }
}
