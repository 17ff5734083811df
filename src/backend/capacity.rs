//! `max_running_apps`: how many apps this backend runs at once. Anyone who can list site names
//! (certificate transparency logs show them) could otherwise start every app, a request each,
//! until memory runs out. When a start would pass the cap, the least recently used app with no
//! request in flight is stopped first; when every running app is busy, the start waits (within
//! its deadline) for one to become idle.

use super::activity::Activity;
use super::emperor::Emperor;
use super::initializer::Initializer;
use crate::config::SocketTemplate;
use crate::metrics;
use log::{info, warn};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a start that waits for room looks again.
const ROOM_POLL: Duration = Duration::from_millis(50);

pub struct Capacity {
    max: Option<usize>,
    /// Sites whose app is enabled, by Herald or found so.
    running: Mutex<HashSet<String>>,
    activity: Arc<Activity>,
    initializer: Arc<Initializer>,
    emperor: Arc<Emperor>,
    socket_path: SocketTemplate,
    /// How long a stopped app has to exit before it no longer counts as stopping.
    stop_timeout: Duration,
}

/// What a `Capacity` works with.
pub struct Parts {
    pub activity: Arc<Activity>,
    pub initializer: Arc<Initializer>,
    pub emperor: Arc<Emperor>,
    pub socket_path: SocketTemplate,
    pub stop_timeout: Duration,
}

impl Capacity {
    /// Starts with the apps enabled in `vassals_dir` now.
    pub fn new(max: Option<usize>, vassals_dir: &Path, parts: Parts) -> Capacity {
        let running = std::fs::read_dir(vassals_dir)
            .map(|entries| {
                entries
                    .filter_map(|e| {
                        e.ok()?
                            .file_name()
                            .to_str()?
                            .strip_suffix(".ini")
                            .map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let capacity = Capacity {
            max,
            running: Mutex::new(running),
            activity: parts.activity,
            initializer: parts.initializer,
            emperor: parts.emperor,
            socket_path: parts.socket_path,
            stop_timeout: parts.stop_timeout,
        };
        capacity.publish();
        capacity
    }

    pub fn started(&self, site: &str) {
        self.running
            .lock()
            .expect("never poisoned")
            .insert(site.to_owned());
        self.publish();
    }

    pub fn stopped(&self, site: &str) {
        self.running.lock().expect("never poisoned").remove(site);
        self.publish();
    }

    /// What a sweep of the emperor's directory found enabled.
    pub fn found(&self, enabled: HashSet<String>) {
        *self.running.lock().expect("never poisoned") = enabled;
        self.publish();
    }

    fn publish(&self) {
        let count = self.running.lock().expect("never poisoned").len();
        metrics::APPS_ENABLED.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Room for `site`'s app before it starts: at once under the cap, else by stopping the
    /// least recently used idle app, else once one becomes idle, until `deadline`.
    pub async fn make_room(&self, site: &str, deadline: Instant) -> Result<(), String> {
        let Some(max) = self.max else {
            return Ok(());
        };
        loop {
            let victim = {
                let running = self.running.lock().expect("never poisoned");
                if running.len() < max || running.contains(site) {
                    return Ok(());
                }
                self.least_recently_used_idle(&running)
            };
            if let Some((victim, record)) = victim {
                match self.initializer.disable(&victim).await {
                    Ok(()) => {
                        self.emperor.wake().await;
                        info!(
                            "stop {victim}: the least recently used of {max} running apps (max_running_apps), idle for {} s, to make room for {site}",
                            self.activity.idle_for(&record).as_secs()
                        );
                        metrics::app_evicted();
                        self.activity.reset(&record);
                        self.stopped(&victim);
                        super::reaper::release_when_gone(
                            record,
                            self.socket_path.path_for(&victim),
                            self.stop_timeout,
                        );
                        return Ok(());
                    }
                    Err(e) => {
                        warn!("stop {victim}: {e}");
                        record.end_stop();
                    }
                }
            }
            if Instant::now() + ROOM_POLL > deadline {
                return Err(format!(
                    "all {max} running apps (max_running_apps) had requests in flight"
                ));
            }
            tokio::time::sleep(ROOM_POLL).await;
        }
    }

    /// The running app idle the longest, claimed for stopping (so no request starts on it
    /// meanwhile); `None` when every one has a request in flight.
    fn least_recently_used_idle(
        &self,
        running: &HashSet<String>,
    ) -> Option<(String, Arc<super::activity::SiteActivity>)> {
        let mut candidates: Vec<(Duration, &String)> = running
            .iter()
            .map(|site| (self.activity.idle_for(&self.activity.site(site)), site))
            .collect();
        candidates.sort_by_key(|(idle, _)| std::cmp::Reverse(*idle));
        candidates.into_iter().find_map(|(_, site)| {
            let record = self.activity.site(site);
            record.try_begin_stop().then(|| (site.clone(), record))
        })
    }
}
