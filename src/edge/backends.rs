//! The edge's list of backend servers: from `edge.backends`, or from `edge.backends_file`,
//! which is re-read every second so config management can add and remove servers without a
//! restart. A file that cannot be read or parsed keeps the last good list.

use crate::config::backends::parse_backends_file;
use crate::config::{BackendAddr, HashMode};
use crate::metrics;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use log::{error, info};
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::Backend;
use pingora::prelude::*;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub struct BackendList {
    file: Option<PathBuf>,
    hash: HashMode,
    /// The current list in the order written (modulo placement indexes it).
    ordered: ArcSwap<Vec<Backend>>,
    /// The last problem with the file, so that it is logged once, not every second.
    last_problem: Mutex<Option<String>>,
}

impl BackendList {
    /// `initial` is the list the configuration check read; with a `file`, it is re-read.
    pub fn new(initial: &[BackendAddr], file: Option<PathBuf>, hash: HashMode) -> Self {
        let ordered = to_backends(initial);
        for backend in &ordered {
            metrics::set_backend_up(&backend.addr.to_string(), true);
        }
        if file.is_some() {
            metrics::BACKENDS_FILE_VALID.set(1);
        }
        BackendList {
            file,
            hash,
            ordered: ArcSwap::from_pointee(ordered),
            last_problem: Mutex::new(None),
        }
    }

    pub fn ordered(&self) -> Arc<Vec<Backend>> {
        self.ordered.load_full()
    }

    pub fn watches_file(&self) -> bool {
        self.file.is_some()
    }

    /// Reads the file again; `None` (with the problem logged once) if it is unusable.
    async fn reread(&self) -> Option<Vec<Backend>> {
        let path = self.file.as_ref()?;
        let parsed = match tokio::fs::read_to_string(path).await {
            Ok(text) => {
                parse_backends_file(&text, self.hash).map_err(|problems| problems.join("; "))
            }
            Err(e) => Err(format!("cannot read it: {e}")),
        };
        let mut last_problem = self.last_problem.lock().expect("problem lock");
        match parsed {
            Ok(list) => {
                if last_problem.take().is_some() {
                    info!("backends file {path:?} is valid again");
                }
                metrics::BACKENDS_FILE_VALID.set(1);
                Some(to_backends(&list))
            }
            Err(problem) => {
                metrics::BACKENDS_FILE_ERRORS.inc();
                if last_problem.as_deref() != Some(problem.as_str()) {
                    metrics::config_reloaded(false);
                }
                metrics::BACKENDS_FILE_VALID.set(0);
                if last_problem.as_deref() != Some(problem.as_str()) {
                    error!("backends file {path:?}: {problem}; keeping the last good list");
                    *last_problem = Some(problem);
                }
                None
            }
        }
    }

    /// Installs `list`, logging what joined and what left.
    fn install(&self, list: Vec<Backend>) {
        let old = self.ordered.load();
        if **old == list {
            return;
        }
        for added in list.iter().filter(|b| !old.contains(b)) {
            info!(
                "backend {} (weight {}) joined the list",
                added.addr, added.weight
            );
            metrics::set_backend_up(&added.addr.to_string(), true);
        }
        for removed in old.iter().filter(|b| !list.contains(b)) {
            info!(
                "backend {} (weight {}) left the list",
                removed.addr, removed.weight
            );
            if !list.iter().any(|b| b.addr == removed.addr) {
                metrics::forget_backend(&removed.addr.to_string());
            }
        }
        if old.len() == list.len() && old.iter().all(|b| list.contains(b)) {
            info!("backends file: same servers in a new order");
        }
        metrics::config_reloaded(true);
        self.ordered.store(Arc::new(list));
    }
}

fn to_backends(list: &[BackendAddr]) -> Vec<Backend> {
    list.iter()
        .map(|b| {
            Backend::new_with_weight(&b.addr.to_string(), b.weight).expect("validated ip:port")
        })
        .collect()
}

/// Pingora's discovery hook over a shared `BackendList`.
pub struct Discovery(pub Arc<BackendList>);

#[async_trait]
impl ServiceDiscovery for Discovery {
    async fn discover(&self) -> Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        if let Some(list) = self.0.reread().await {
            self.0.install(list);
        } else if self.0.watches_file() {
            // An error keeps Pingora's previous set; the ordered list is kept the same way.
            return Error::e_explain(
                InternalError,
                "backends file unusable; keeping the last good list",
            );
        }
        Ok((self.0.ordered().iter().cloned().collect(), HashMap::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> BackendAddr {
        crate::config::backends::parse_backend_entry(text).unwrap()
    }

    #[tokio::test]
    async fn a_bad_file_keeps_the_last_good_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backends");
        std::fs::write(&path, "10.0.0.1:80\n10.0.0.2:80\n").unwrap();
        let list = Arc::new(BackendList::new(
            &[addr("10.0.0.1:80"), addr("10.0.0.2:80")],
            Some(path.clone()),
            HashMode::Ketama,
        ));
        let discovery = Discovery(list.clone());
        assert_eq!(discovery.discover().await.unwrap().0.len(), 2);

        std::fs::write(&path, "10.0.0.1:80\n10.0.0.3:80 2\n").unwrap();
        let (set, _) = discovery.discover().await.unwrap();
        let addrs: Vec<String> = list
            .ordered()
            .iter()
            .map(|b| format!("{} {}", b.addr, b.weight))
            .collect();
        assert_eq!(addrs, ["10.0.0.1:80 1", "10.0.0.3:80 2"]);
        assert_eq!(set.len(), 2);

        for bad in ["", "10.0.0.x:80\n", "# all commented out\n"] {
            std::fs::write(&path, bad).unwrap();
            assert!(discovery.discover().await.is_err(), "{bad:?}");
            assert_eq!(list.ordered().len(), 2, "kept after {bad:?}");
        }
        std::fs::remove_file(&path).unwrap();
        assert!(discovery.discover().await.is_err());
        assert_eq!(list.ordered().len(), 2);
    }
}
