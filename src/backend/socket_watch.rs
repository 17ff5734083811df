//! Tells waiting starts the moment a socket appears or disappears in the socket directory
//! (inotify), so Herald reacts to an app coming up without waiting for its next poll, and
//! sees an app that dies while it starts (its socket created, then removed) at once.

use async_trait::async_trait;
use inotify::{EventMask, Inotify, WatchMask};
use log::{debug, warn};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::unix::AsyncFd;
use tokio::sync::broadcast;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketChange {
    Created,
    Removed,
}

pub struct SocketWatcher {
    dir: PathBuf,
    changes: broadcast::Sender<(OsString, SocketChange)>,
    watching: AtomicBool,
}

/// Enough for a burst of socket changes while a start is busy connecting; a waiter that falls
/// behind just polls.
const CHANNEL_CAPACITY: usize = 1024;

impl SocketWatcher {
    pub fn new(dir: PathBuf) -> Self {
        SocketWatcher {
            dir,
            changes: broadcast::channel(CHANNEL_CAPACITY).0,
            watching: AtomicBool::new(false),
        }
    }

    /// Changes from now on, or `None` when inotify is not available (callers then poll).
    pub fn subscribe(&self) -> Option<broadcast::Receiver<(OsString, SocketChange)>> {
        self.watching
            .load(Ordering::Acquire)
            .then(|| self.changes.subscribe())
    }

    fn open(&self) -> std::io::Result<AsyncFd<Inotify>> {
        let inotify = Inotify::init()?;
        inotify.watches().add(
            &self.dir,
            WatchMask::CREATE | WatchMask::DELETE | WatchMask::MOVED_TO | WatchMask::MOVED_FROM,
        )?;
        crate::inotify_fd::register(inotify)
    }
}

#[async_trait]
impl BackgroundService for SocketWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut inotify = match self.open() {
            Ok(inotify) => inotify,
            Err(e) => {
                warn!(
                    "cannot watch {:?} for app sockets ({e}); starts will poll only",
                    self.dir
                );
                return;
            }
        };
        self.watching.store(true, Ordering::Release);
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                ready = inotify.readable_mut() => {
                    let mut guard = match ready {
                        Ok(guard) => guard,
                        Err(e) => {
                            warn!("socket watch on {:?} failed: {e}; starts will poll only", self.dir);
                            break;
                        }
                    };
                    match guard.try_io(|inner| inner.get_mut().read_events(&mut buffer).map(|events| {
                        for event in events {
                            let Some(name) = event.name else { continue };
                            let change = if event.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
                                SocketChange::Created
                            } else {
                                SocketChange::Removed
                            };
                            // No receiver is fine: no start is waiting.
                            let _ = self.changes.send((name.to_owned(), change));
                        }
                    })) {
                        Ok(Ok(())) | Err(_) => {}
                        Ok(Err(e)) => debug!("reading socket events: {e}"),
                    }
                }
            }
        }
        self.watching.store(false, Ordering::Release);
    }
}
