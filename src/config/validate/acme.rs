//! `edge.tls.acme`: certificates ordered on demand. Everything that can be checked without
//! the network is an error here; whether the storage answers is the `-t` warning's business
//! (`acme::storage::check_reachable`), since an edge must start while Redis is down.

use super::super::file::AcmeSection;
use super::*;

const DEFAULT_WAIT: Duration = Duration::from_secs(10);
/// Well under Let's Encrypt's limits (300 new orders per account per 3 hours, 50 certificates
/// per registered domain per week).
const DEFAULT_MAX_ORDERS_PER_HOUR: u32 = 20;
const DEFAULT_QUEUE: usize = 1000;
const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(2);

impl Checker {
    pub(super) fn acme(
        &mut self,
        raw: &AcmeSection,
        handshake_timeout: Duration,
    ) -> Option<AcmeConfig> {
        let field = |key: &str| format!("edge.tls.acme.{key}");
        let problems = self.problems.len();
        match raw.directory.parse::<http::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {}
            _ => self.bad(
                field("directory"),
                format!(
                    "{:?} must be the ACME server's https:// directory URL, like \
                     https://acme-v02.api.letsencrypt.org/directory",
                    raw.directory
                ),
            ),
        }
        let contact: Vec<String> = raw
            .contact
            .iter()
            .flat_map(|text| text.split(','))
            .map(|one| one.trim().to_owned())
            .filter(|one| !one.is_empty())
            .collect();
        for one in &contact {
            if !one.starts_with("mailto:") || one.len() <= "mailto:".len() {
                self.bad(
                    field("contact"),
                    format!("{one:?} must be a mailto: address, like mailto:ops@example.com"),
                );
            }
        }
        let ask = match raw.ask.parse::<http::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some() => Some(uri),
            _ => {
                self.bad(
                    field("ask"),
                    format!(
                        "{:?} must be an http:// URL, like http://127.0.0.1:9000/allowed \
                         (Herald adds ?domain=NAME)",
                        raw.ask
                    ),
                );
                None
            }
        };
        let storage = if raw.storage.starts_with("redis://") {
            match redis::Client::open(raw.storage.as_str()) {
                Ok(_) => Some(AcmeStorage::Redis(raw.storage.clone())),
                Err(e) => {
                    self.bad(field("storage"), format!("{:?}: {e}", raw.storage));
                    None
                }
            }
        } else if Path::new(&raw.storage).is_absolute() {
            let dir = PathBuf::from(&raw.storage);
            if !dir.parent().is_some_and(Path::is_dir) {
                self.bad(
                    field("storage"),
                    format!("{:?}: its parent directory does not exist", raw.storage),
                );
            }
            Some(AcmeStorage::Directory(dir))
        } else {
            self.bad(
                field("storage"),
                format!(
                    "{:?} must be redis://HOST:PORT/DB (shared by every edge) or an absolute \
                     directory (one edge)",
                    raw.storage
                ),
            );
            None
        };
        let ca_roots = raw.ca_roots.as_ref().map(PathBuf::from);
        if let Some(path) = &ca_roots {
            match crate::acme::roots::read_pem_roots(path) {
                Ok(roots) if roots.is_empty() => self.bad(
                    field("ca_roots"),
                    format!("{}: no PEM certificate in it", path.display()),
                ),
                Ok(_) => {}
                Err(e) => self.bad(field("ca_roots"), format!("{}: {e}", path.display())),
            }
        }
        let wait = self.positive_duration(&field("wait"), raw.wait.as_ref(), DEFAULT_WAIT);
        if wait >= handshake_timeout {
            self.bad(
                field("wait"),
                format!(
                    "{wait:?} must be shorter than edge.tls.ssl_handshake_timeout \
                     ({handshake_timeout:?}), which ends a waiting handshake first"
                ),
            );
        }
        let max_orders_per_hour = raw
            .max_orders_per_hour
            .unwrap_or(DEFAULT_MAX_ORDERS_PER_HOUR);
        if max_orders_per_hour == 0 {
            self.bad(field("max_orders_per_hour"), "must be at least 1");
        }
        let queue = raw.queue.unwrap_or(DEFAULT_QUEUE);
        if queue == 0 {
            self.bad(field("queue"), "must be at least 1");
        }
        let sync_interval = self.positive_duration(
            &field("sync_interval"),
            raw.sync_interval.as_ref(),
            DEFAULT_SYNC_INTERVAL,
        );
        if self.problems.len() > problems {
            return None;
        }
        Some(AcmeConfig {
            directory: raw.directory.clone(),
            contact,
            ask: ask?,
            storage: storage?,
            ca_roots,
            wait,
            max_orders_per_hour,
            queue,
            sync_interval,
        })
    }
}
