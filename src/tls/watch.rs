//! Keeps the served certificates current at the cost of the changes, not of the directory:
//! inotify on `certs_dir` (and on the directories the default pair and symlinked pairs lead
//! through, such as certbot's `live/NAME`) names the files that changed, and only their pairs
//! are read again, within milliseconds. A full rescan every `FULL_RESCAN` catches what inotify
//! cannot see (a network filesystem, a lost event); where inotify is not available, that
//! rescan runs every `FALLBACK_RESCAN` instead.

use super::resolver::SniResolver;
use super::store::{CertStore, Event};
use async_trait::async_trait;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use log::{info, warn};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// The safety net behind inotify: 25,000 pairs are 50,000 `stat` calls, once a minute.
const FULL_RESCAN: Duration = Duration::from_secs(60);
/// Without inotify, changes are found by rescanning this often.
const FALLBACK_RESCAN: Duration = Duration::from_secs(2);

/// The pairs that directories outside `certs_dir` concern (`None`: the default pair).
type LinkedDirs = BTreeMap<PathBuf, HashSet<Option<String>>>;

/// Re-reads the certificates that change and swaps the resolver's index.
pub struct CertWatcher {
    pub store: Arc<Mutex<CertStore>>,
    pub resolver: Arc<SniResolver>,
    pub certs_dir: Option<PathBuf>,
}

/// What an inotify read said changed.
#[derive(Default)]
struct Changes {
    /// Names of files in `certs_dir`.
    files: Vec<OsString>,
    /// Pairs (and the default, as `None`) whose linked directories changed.
    linked: HashSet<Option<String>>,
    /// Events were lost: everything must be looked at.
    overflow: bool,
}

struct Watch {
    inotify: AsyncFd<Inotify>,
    certs_dir: Option<WatchDescriptor>,
    /// Watched directories outside `certs_dir`, and what each concerns.
    linked: HashMap<WatchDescriptor, PathBuf>,
    watched: BTreeMap<PathBuf, WatchDescriptor>,
    concerns: LinkedDirs,
}

const MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::DELETE)
    .union(WatchMask::ATTRIB);

impl Watch {
    fn open(certs_dir: Option<&PathBuf>) -> std::io::Result<Watch> {
        let inotify = Inotify::init()?;
        let certs_dir = match certs_dir {
            Some(dir) => Some(inotify.watches().add(dir, MASK)?),
            None => None,
        };
        Ok(Watch {
            inotify: crate::inotify_fd::register(inotify)?,
            certs_dir,
            linked: HashMap::new(),
            watched: BTreeMap::new(),
            concerns: BTreeMap::new(),
        })
    }

    /// Watches `dirs` too (`replace`: and only them, besides `certs_dir`).
    fn follow(&mut self, dirs: LinkedDirs, replace: bool) {
        if replace {
            let stale: Vec<PathBuf> = self
                .watched
                .keys()
                .filter(|dir| !dirs.contains_key(*dir))
                .cloned()
                .collect();
            for dir in stale {
                if let Some(wd) = self.watched.remove(&dir) {
                    self.linked.remove(&wd);
                    let _ = self.inotify.get_mut().watches().remove(wd);
                }
            }
            self.concerns.clear();
        }
        let mut unwatched: Option<(usize, String)> = None;
        for (dir, pairs) in dirs {
            if !self.watched.contains_key(&dir) {
                match self.inotify.get_mut().watches().add(&dir, MASK) {
                    // `certs_dir` by another name: its events are read as `certs_dir`'s.
                    Ok(wd) if Some(&wd) == self.certs_dir.as_ref() => {}
                    Ok(wd) => {
                        self.linked.insert(wd.clone(), dir.clone());
                        self.watched.insert(dir.clone(), wd);
                    }
                    Err(e) => {
                        let (count, _) = unwatched.get_or_insert((0, format!("{dir:?}: {e}")));
                        *count += 1;
                    }
                }
            }
            self.concerns.entry(dir).or_default().extend(pairs);
        }
        // Typically fs.inotify.max_user_watches: certbot's layout takes two per pair.
        if let Some((count, first)) = unwatched {
            warn!("cannot watch {count} directories that certificates link through (first: {first}); their changes are found by the full rescan, every {FULL_RESCAN:?}");
        }
    }

    /// Waits for changes and reads them all.
    async fn changes(&mut self, buffer: &mut [u8]) -> std::io::Result<Changes> {
        loop {
            let mut guard = self.inotify.readable_mut().await?;
            let read = guard.try_io(|inner| {
                let mut changes = Changes::default();
                for event in inner.get_mut().read_events(buffer)? {
                    if event.mask.contains(EventMask::Q_OVERFLOW) {
                        changes.overflow = true;
                    } else if Some(&event.wd) == self.certs_dir.as_ref() {
                        changes.files.extend(event.name.map(OsString::from));
                    } else if let Some(pairs) = self
                        .linked
                        .get(&event.wd)
                        .and_then(|dir| self.concerns.get(dir))
                    {
                        changes.linked.extend(pairs.iter().cloned());
                    }
                }
                Ok(changes)
            });
            if let Ok(changes) = read {
                return changes;
            }
        }
    }
}

impl CertWatcher {
    /// Runs `work` on the store (off the runtime: it reads files), publishes what changed,
    /// and returns the directories to follow now.
    async fn update(
        &self,
        work: impl FnOnce(&mut CertStore) -> (Vec<Event>, LinkedDirs) + Send + 'static,
    ) -> Option<LinkedDirs> {
        let store = self.store.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut store = store.lock().expect("certificate store lock");
            let (events, linked) = work(&mut store);
            let update = (!events.is_empty()).then(|| (store.index(), store.summary()));
            if update.is_some() {
                crate::status::set_certificates(store.soonest(crate::status::CERTIFICATES_LISTED));
            }
            (events, update, linked)
        })
        .await;
        let Ok((events, update, linked)) = done else {
            return None;
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
            super::publish(summary);
        }
        Some(linked)
    }

    async fn full_rescan(&self) -> Option<LinkedDirs> {
        self.update(|store| (store.rescan(), store.linked_dirs(None)))
            .await
    }

    async fn apply(&self, changes: Changes) -> Option<LinkedDirs> {
        if changes.overflow {
            return self.full_rescan().await;
        }
        self.update(move |store| {
            let mut events = Vec::new();
            let mut stems: HashSet<String> = HashSet::new();
            // The default pair may live in `certs_dir` itself; looking costs two `stat`s.
            if changes.linked.contains(&None) || !changes.files.is_empty() {
                events.extend(store.refresh_default());
            }
            stems.extend(changes.linked.into_iter().flatten());
            stems.extend(CertStore::stems_of(
                changes.files.iter().map(OsString::as_os_str),
            ));
            events.extend(store.refresh_stems(stems.iter().cloned()));
            let linked = store.linked_dirs(Some(&stems));
            (events, linked)
        })
        .await
    }
}

#[async_trait]
impl BackgroundService for CertWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut watch = match Watch::open(self.certs_dir.as_ref()) {
            Ok(watch) => Some(watch),
            Err(e) => {
                warn!(
                    "cannot watch {:?} for certificate changes ({e}): it is rescanned every {FALLBACK_RESCAN:?} instead",
                    self.certs_dir
                );
                None
            }
        };
        let rescan_every = if watch.is_some() {
            FULL_RESCAN
        } else {
            FALLBACK_RESCAN
        };
        if let (Some(watch), Some(linked)) = (watch.as_mut(), self.linked_now().await) {
            watch.follow(linked, true);
        }
        let mut buffer = vec![0u8; 64 * 1024];
        let mut next_rescan = tokio::time::Instant::now() + rescan_every;
        loop {
            let changes = async {
                match watch.as_mut() {
                    Some(watch) => watch.changes(&mut buffer).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                changes = changes => match changes {
                    Ok(changes) => {
                        if let (Some(linked), Some(watch)) = (self.apply(changes).await, watch.as_mut()) {
                            watch.follow(linked, false);
                        }
                    }
                    Err(e) => {
                        warn!("the certificate watch failed ({e}): certs_dir is rescanned every {FALLBACK_RESCAN:?} instead");
                        watch = None;
                        next_rescan = tokio::time::Instant::now() + FALLBACK_RESCAN;
                    }
                },
                () = tokio::time::sleep_until(next_rescan) => {
                    let linked = self.full_rescan().await;
                    if let (Some(linked), Some(watch)) = (linked, watch.as_mut()) {
                        watch.follow(linked, true);
                    }
                    let every = if watch.is_some() { FULL_RESCAN } else { FALLBACK_RESCAN };
                    next_rescan = tokio::time::Instant::now() + every;
                }
            }
        }
    }
}

impl CertWatcher {
    async fn linked_now(&self) -> Option<LinkedDirs> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            store
                .lock()
                .expect("certificate store lock")
                .linked_dirs(None)
        })
        .await
        .ok()
    }
}
