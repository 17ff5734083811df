//! Starting a site's app when a request finds it not running: one start per site however
//! many requests wait on it (single flight), at most `max_starts` at once across sites, a
//! bounded queue beyond that, and a memory of failed starts so a broken app is not started
//! over and over.

use super::activity::SiteActivity;
use super::capacity::Capacity;
use super::emperor::{Emperor, VassalRun};
use super::initializer::{InitError, Initializer};
use super::socket_watch::{SocketChange, SocketWatcher};
use crate::config::{AppStarts, SocketTemplate};
use crate::metrics;
use crate::pages::{self, Page};
use log::{info, warn};
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, watch, Semaphore, SemaphorePermit};

/// Why a request's app could not be made to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartError {
    /// The app did not answer within `start_timeout` (504).
    TimedOut,
    /// The app is enabled but does not answer, or died while starting (502).
    Broken,
    /// The site's vassal cannot work as written (502).
    Misconfigured,
    /// The initializer failed or refused (503).
    Failed,
    /// Too many starts in progress or queued (503).
    Busy,
}

impl StartError {
    pub fn status(self) -> u16 {
        match self {
            StartError::TimedOut => 504,
            StartError::Broken | StartError::Misconfigured => 502,
            StartError::Failed | StartError::Busy => 503,
        }
    }

    pub fn page(self) -> &'static Page {
        match self {
            StartError::TimedOut => &pages::APP_START_TIMEOUT,
            StartError::Broken => &pages::APP_BROKEN,
            StartError::Misconfigured => &pages::APP_MISCONFIGURED,
            StartError::Failed | StartError::Busy => &pages::APP_START_UNAVAILABLE,
        }
    }

    /// The `result` label of `herald_app_starts_total`.
    pub fn result(self) -> &'static str {
        match self {
            StartError::TimedOut => "timeout",
            StartError::Broken | StartError::Failed => "failed",
            StartError::Misconfigured | StartError::Busy => "refused",
        }
    }
}

/// A failed start as a request sees it: what went wrong, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartFailure {
    pub error: StartError,
    pub retry_after: Duration,
}

type Outcome = Result<(), StartFailure>;

/// How often a waiting start re-checks the socket; inotify (`SocketWatcher`) usually wakes it
/// sooner.
const FIRST_POLL: Duration = Duration::from_millis(1);
const MAX_POLL: Duration = Duration::from_millis(5);
/// A busy slot queue answers Retry-After with this; a failed start with `retry_after`.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

pub struct Starter {
    initializer: Arc<Initializer>,
    capacity: Arc<Capacity>,
    socket_path: SocketTemplate,
    watcher: Arc<SocketWatcher>,
    emperor: Arc<Emperor>,
    start_timeout: Duration,
    retry_after: Duration,
    start_queue: usize,
    slots: Semaphore,
    queued: AtomicUsize,
    flights: Mutex<HashMap<String, watch::Receiver<Option<Outcome>>>>,
    failures: Mutex<HashMap<String, (Instant, StartFailure)>>,
    /// The last starts, newest last, for the status page.
    recent: Mutex<std::collections::VecDeque<crate::status::StartRecord>>,
}

/// How many starts the status page lists.
const RECENT_STARTS: usize = 20;

impl Starter {
    pub fn new(
        config: &AppStarts,
        initializer: Arc<Initializer>,
        capacity: Arc<Capacity>,
        socket_path: SocketTemplate,
        watcher: Arc<SocketWatcher>,
        emperor: Arc<Emperor>,
    ) -> Self {
        Starter {
            initializer,
            capacity,
            socket_path,
            watcher,
            emperor,
            start_timeout: config.start_timeout,
            retry_after: config.retry_after,
            start_queue: config.start_queue,
            slots: Semaphore::new(config.max_starts),
            queued: AtomicUsize::new(0),
            flights: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            recent: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// Returns once the site's app answers on its socket, starting it if needed. Every caller
    /// for the same site shares one start, which runs on its own task so that a client that
    /// goes away does not cancel it for the others.
    pub async fn ensure_running(
        self: &Arc<Self>,
        site: &str,
        activity: Arc<SiteActivity>,
    ) -> Outcome {
        if let Some(failure) = self.recent_failure(site) {
            return Err(failure);
        }
        let mut outcome = {
            let mut flights = self.flights.lock().expect("flights lock");
            match flights.get(site) {
                Some(flight) => flight.clone(),
                None => {
                    let (done, outcome) = watch::channel(None);
                    flights.insert(site.to_owned(), outcome.clone());
                    let starter = self.clone();
                    let site = site.to_owned();
                    tokio::spawn(async move {
                        let result = starter.start(&site, &activity).await;
                        if let Err(failure) = result {
                            if failure.error != StartError::Busy {
                                starter.remember_failure(&site, failure);
                            }
                        }
                        starter.flights.lock().expect("flights lock").remove(&site);
                        let _ = done.send(Some(result));
                    });
                    outcome
                }
            }
        };
        metrics::REQUESTS_WAITED_ON_START.inc();
        let result = match outcome.wait_for(Option::is_some).await {
            Ok(result) => result.expect("waited for Some"),
            // The start task ended without an answer: only a panic does that.
            Err(_) => Err(StartFailure {
                error: StartError::Failed,
                retry_after: BUSY_RETRY_AFTER,
            }),
        };
        result
    }

    /// The app came up for a start and then dropped the first request it was sent without an
    /// answer: it died loading (uWSGI listens before it imports the app). Requests get the
    /// broken-app page at once for `retry_after`, instead of each waiting on the next respawn.
    pub fn report_died_after_start(&self, site: &str) {
        warn!(
            "start {site}: failed, the app closed its first request unanswered; see its uWSGI log"
        );
        crate::site_logs::error(
            site,
            "the app failed to start: it closed its first request unanswered (it probably could not load; its uWSGI log says why)",
        );
        // Its socket answered, so the start was recorded as ok: it was not.
        if let Some(last) = self
            .recent
            .lock()
            .expect("recent lock")
            .iter_mut()
            .rev()
            .find(|record| record.site == site)
        {
            last.result = StartError::Broken.result();
        }
        self.remember_failure(
            site,
            StartFailure {
                error: StartError::Broken,
                retry_after: self.retry_after,
            },
        );
    }

    fn recent_failure(&self, site: &str) -> Option<StartFailure> {
        let mut failures = self.failures.lock().expect("failures lock");
        let (at, failure) = failures.get(site).copied()?;
        let remaining = self.retry_after.saturating_sub(at.elapsed());
        if remaining.is_zero() {
            failures.remove(site);
            return None;
        }
        Some(StartFailure {
            retry_after: remaining,
            ..failure
        })
    }

    fn record(&self, site: &str, error: Option<StartError>, took: Duration) {
        let mut recent = self.recent.lock().expect("recent lock");
        if recent.len() == RECENT_STARTS {
            recent.pop_front();
        }
        recent.push_back(crate::status::StartRecord {
            site: site.to_owned(),
            result: error.map_or("ok", StartError::result),
            took,
            at: std::time::SystemTime::now(),
        });
    }

    fn remember_failure(&self, site: &str, failure: StartFailure) {
        let mut failures = self.failures.lock().expect("failures lock");
        // Forget expired entries here rather than in a task of their own.
        failures.retain(|_, (at, _)| at.elapsed() < self.retry_after);
        failures.insert(site.to_owned(), (Instant::now(), failure));
    }

    /// One start, with its slot, its log line and its metrics.
    async fn start(&self, site: &str, activity: &SiteActivity) -> Outcome {
        let began = Instant::now();
        let result = match self.take_slot().await {
            Ok(_slot) => {
                let _in_progress = metrics::StartInProgress::new();
                self.bring_up(site, activity, began + self.start_timeout)
                    .await
            }
            Err(why) => Err((StartError::Busy, why)),
        };
        let elapsed = began.elapsed();
        let ms = elapsed.as_millis();
        self.record(
            site,
            result.as_ref().err().map(|(error, _)| *error),
            elapsed,
        );
        match result {
            Ok(()) => {
                info!("start {site}: ok in {ms} ms");
                metrics::record_start("ok", elapsed);
                Ok(())
            }
            Err((error, why)) => {
                warn!("start {site}: {} in {ms} ms, {why}", error.result());
                crate::site_logs::error(
                    site,
                    &format!(
                        "the app failed to start ({} after {ms} ms): {why}",
                        error.result()
                    ),
                );
                metrics::record_start(error.result(), elapsed);
                let retry_after = match error {
                    StartError::Busy => BUSY_RETRY_AFTER,
                    _ => self.retry_after,
                };
                Err(StartFailure { error, retry_after })
            }
        }
    }

    /// A start slot: a free one at once, else after waiting in the bounded queue (at most
    /// `start_queue` sites, `0`: none) for at most `start_timeout`.
    async fn take_slot(&self) -> Result<SemaphorePermit<'_>, String> {
        if let Ok(slot) = self.slots.try_acquire() {
            return Ok(slot);
        }
        if self.queued.fetch_add(1, Ordering::SeqCst) >= self.start_queue {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(format!(
                "{} sites already wait for a start slot",
                self.start_queue
            ));
        }
        let slot = tokio::time::timeout(self.start_timeout, self.slots.acquire()).await;
        self.queued.fetch_sub(1, Ordering::SeqCst);
        match slot {
            Ok(Ok(slot)) => Ok(slot),
            _ => Err(format!("no start slot within {:?}", self.start_timeout)),
        }
    }

    async fn bring_up(
        &self,
        site: &str,
        activity: &SiteActivity,
        deadline: Instant,
    ) -> Result<(), (StartError, String)> {
        let socket = self.socket_path.path_for(site);
        let changes = self.watcher.subscribe();
        if !activity.is_stopping() && answers(&socket).await {
            // Up since the request's connect failed (another start, or an emperor restart).
            return Ok(());
        }
        if activity.is_stopping() {
            // The reaper just disabled this app: let the old one go before enabling a new
            // one, so the emperor sees a new vassal rather than a changed one.
            wait_until_gone(&socket, deadline).await.map_err(|e| {
                (
                    e,
                    "the app being stopped for idleness did not exit".to_owned(),
                )
            })?;
            activity.end_stop();
        }
        let vassal = self.initializer.enabled_vassal(site);
        let deadline = match tokio::fs::metadata(&vassal).await {
            Ok(meta) => {
                // Enabled already (by us before a restart, by another Herald process, or by
                // the control plane): still starting if the emperor began running it recently
                // (it was written recently, or the emperor itself just restarted), broken if
                // not.
                let written = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                let file_name = format!("{site}.ini");
                let running_since = match self.emperor.vassal_run(&file_name).await {
                    // Down or restarting: it runs every vassal anew when it is back.
                    VassalRun::EmperorDown => SystemTime::now(),
                    VassalRun::Since(first_run) => written.max(first_run),
                    VassalRun::Unknown | VassalRun::Failing => written,
                };
                let age = SystemTime::now()
                    .duration_since(running_since)
                    .unwrap_or_default();
                if age >= self.start_timeout {
                    return Err((
                        StartError::Broken,
                        format!(
                            "its vassal {vassal:?} has run for {} s and the app does not answer; see the app's uWSGI log",
                            age.as_secs()
                        ),
                    ));
                }
                deadline.min(Instant::now() + (self.start_timeout - age))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.capacity
                    .make_room(site, deadline)
                    .await
                    .map_err(|why| (StartError::Busy, why))?;
                match self.initializer.enable(site).await {
                    Ok(()) => {
                        self.capacity.started(site);
                        // Scan now, not at the emperor's next period; the wait below starts
                        // at once, alongside.
                        let emperor = self.emperor.clone();
                        tokio::spawn(async move { emperor.wake().await });
                        deadline
                    }
                    Err(InitError::Misconfigured(why)) => {
                        return Err((StartError::Misconfigured, why))
                    }
                    Err(InitError::Failed(why)) => return Err((StartError::Failed, why)),
                }
            }
            Err(e) => return Err((StartError::Failed, format!("cannot read {vassal:?}: {e}"))),
        };
        let up = wait_until_answering(&socket, deadline, changes).await;
        if up.is_ok() {
            // The emperor now counts the new app (herald_apps_running).
            let emperor = self.emperor.clone();
            tokio::spawn(async move { emperor.wake().await });
        }
        up.map_err(|error| {
            let why = match error {
                StartError::TimedOut => format!("the app did not answer on {socket} in time"),
                _ => "the app exited while starting; see its uWSGI log".to_owned(),
            };
            (error, why)
        })
    }
}

async fn answers(socket: &str) -> bool {
    UnixStream::connect(socket).await.is_ok()
}

/// Waits for the socket to accept a connection. With socket events, an app whose socket
/// appears and then disappears before it ever answered has died starting: `Broken`.
async fn wait_until_answering(
    socket: &str,
    deadline: Instant,
    mut changes: Option<broadcast::Receiver<(OsString, SocketChange)>>,
) -> Result<(), StartError> {
    let name = Path::new(socket)
        .file_name()
        .map(|n| n.to_owned())
        .unwrap_or_default();
    let mut appeared = false;
    let mut pause = FIRST_POLL;
    loop {
        if answers(socket).await {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(StartError::TimedOut);
        }
        let nap = tokio::time::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(MAX_POLL);
        let Some(events) = changes.as_mut() else {
            nap.await;
            continue;
        };
        tokio::select! {
            _ = nap => {}
            change = events.recv() => match change {
                Ok((changed, SocketChange::Created)) if changed == name => {
                    appeared = true;
                    pause = FIRST_POLL;
                }
                Ok((changed, SocketChange::Removed)) if changed == name && appeared => {
                    // One last look: a removal and re-creation may have raced the events.
                    return if answers(socket).await { Ok(()) } else { Err(StartError::Broken) };
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => changes = None,
            },
        }
    }
}

async fn wait_until_gone(socket: &str, deadline: Instant) -> Result<(), StartError> {
    let mut pause = FIRST_POLL;
    while answers(socket).await {
        let now = Instant::now();
        if now >= deadline {
            return Err(StartError::TimedOut);
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
    Ok(())
}

impl crate::status::Starts for Starter {
    fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    fn broken(&self) -> Vec<(String, &'static str, Duration)> {
        let failures = self.failures.lock().expect("failures lock");
        let mut broken: Vec<_> = failures
            .iter()
            .filter(|(_, (at, _))| at.elapsed() < self.retry_after)
            .map(|(site, (at, failure))| {
                (
                    site.clone(),
                    failure.error.result(),
                    self.retry_after.saturating_sub(at.elapsed()),
                )
            })
            .collect();
        broken.sort();
        broken
    }

    fn recent(&self) -> Vec<crate::status::StartRecord> {
        self.recent
            .lock()
            .expect("recent lock")
            .iter()
            .cloned()
            .collect()
    }
}
