//! Stops apps that have had no request for `idle_timeout`: every enabled vassal of a known
//! site is looked at on each sweep, including apps that were running before Herald started.
//! A process that hands its sockets to a new one in a graceful upgrade stops sweeping at once:
//! its requests have gone to the new process, and to it every app would look idle.

use super::activity::{Activity, SiteActivity};
use super::emperor::Emperor;
use super::initializer::Initializer;
use super::sites::Sites;
use crate::{host, metrics};
use async_trait::async_trait;
use log::{info, warn};
use pingora::server::{ExecutionPhase, ShutdownWatch};
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UnixStream;
use tokio::sync::broadcast;

pub struct Reaper {
    pub activity: Arc<Activity>,
    pub capacity: Arc<super::capacity::Capacity>,
    pub initializer: Arc<Initializer>,
    pub sites: Arc<Sites>,
    pub settings: Arc<super::site_settings::SettingsStore>,
    pub vassals_dir: PathBuf,
    pub idle_timeout: Duration,
    /// How long to wait for a stopped app's socket to go away before forgetting it stops.
    pub stop_timeout: Duration,
    pub emperor: Arc<Emperor>,
    /// Pingora's execution phases, to see a graceful upgrade begin.
    pub phases: Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
}

impl Reaper {
    /// Often enough that an app stops within about a tenth of `idle_timeout` of going idle.
    fn sweep_interval(&self) -> Duration {
        (self.idle_timeout / 10).clamp(Duration::from_millis(100), Duration::from_secs(30))
    }

    async fn sweep(&self) {
        // Keeps herald_apps_running current (when the stats server is configured).
        self.emperor.wake().await;
        let mut entries = match tokio::fs::read_dir(&self.vassals_dir).await {
            Ok(entries) => entries,
            Err(e) => {
                warn!("idle sweep: cannot read {:?}: {e}", self.vassals_dir);
                return;
            }
        };
        let mut enabled = std::collections::HashSet::new();
        while let Ok(Some(entry)) = entries.next_entry().await {
            let file_name = entry.file_name();
            let Some(site) = file_name
                .to_str()
                .and_then(|name| name.strip_suffix(".ini"))
            else {
                continue;
            };
            // Only vassals named like a site Herald knows; the directory may hold others.
            if host::parse_site(site.as_bytes(), true).as_deref() != Ok(site)
                || !self.sites.is_known(site)
            {
                continue;
            }
            enabled.insert(site.to_owned());
            let record = self.activity.site(site);
            if self.activity.idle_for(&record) < self.idle_timeout || !record.try_begin_stop() {
                continue;
            }
            match self.initializer.disable(site).await {
                Ok(()) => {
                    // The app stops now, not at the emperor's next scan.
                    self.emperor.wake().await;
                    info!(
                        "stop {site}: idle for {} s",
                        self.activity.idle_for(&record).as_secs()
                    );
                    metrics::APP_STOPS.inc();
                    enabled.remove(site);
                    self.activity.reset(&record);
                    self.capacity.stopped(site);
                    release_when_gone(
                        record.clone(),
                        self.sites.socket_path(site),
                        self.stop_timeout,
                    );
                }
                Err(e) => {
                    warn!("stop {site}: {e}");
                    record.end_stop();
                }
            }
        }
        self.capacity.found(enabled);
    }
}

/// An app is being stopped: requests meanwhile take the cold-start path, which waits for the
/// old app to exit. This ends the stopping state once its socket is gone (or after `timeout`)
/// if no request came.
pub fn release_when_gone(record: Arc<SiteActivity>, socket: String, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    tokio::spawn(async move {
        while Instant::now() < deadline && UnixStream::connect(&socket).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        record.end_stop();
    });
}

#[async_trait]
impl BackgroundService for Reaper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let interval = self.sweep_interval();
        let mut phases = self.phases.lock().expect("never poisoned").take();
        let mut forgotten = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                handing_over = next_handover(&mut phases) => if handing_over {
                    info!("handing the listening sockets to a new process: idle apps are its to stop now");
                    return;
                },
                _ = tokio::time::sleep(interval) => self.sweep().await,
            }
            // Once per idle_timeout (the sweeps look only at running apps): records of sites
            // idle that long are of no more use, their apps are stopped.
            if forgotten.elapsed() >= self.idle_timeout {
                self.activity.forget_idle(self.idle_timeout);
                self.sites
                    .forget_unless(|site| self.activity.has_record(site));
                self.settings
                    .forget_unless(|site| self.activity.has_record(site));
                forgotten = Instant::now();
            }
        }
    }
}

/// Waits for the next execution phase; `true` once a graceful upgrade hands the sockets over.
/// Never ends when there are no phases to watch.
async fn next_handover(phases: &mut Option<broadcast::Receiver<ExecutionPhase>>) -> bool {
    let Some(receiver) = phases else {
        return std::future::pending().await;
    };
    match receiver.recv().await {
        Ok(ExecutionPhase::GracefulUpgradeTransferringFds)
        | Ok(ExecutionPhase::GracefulUpgradeCloseTimeout) => true,
        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => false,
        Err(broadcast::error::RecvError::Closed) => {
            *phases = None;
            false
        }
    }
}
