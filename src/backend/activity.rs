//! When each site last had a request, and whether one is in progress, so idle apps can be
//! stopped. Recording a request is an atomic store on a shared map read without a lock;
//! only a site's first request since Herald started (or since its app was stopped) clones
//! the map.

use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Activity {
    epoch: Instant,
    sites: ArcSwap<HashMap<String, Arc<SiteActivity>>>,
}

pub struct SiteActivity {
    /// Seconds since `Activity::epoch` of the last request's start or end.
    last_seen: AtomicU64,
    in_flight: AtomicUsize,
    /// Set while the reaper stops the app; requests then take the cold-start path.
    stopping: AtomicBool,
}

impl Activity {
    pub fn new() -> Self {
        Activity {
            epoch: Instant::now(),
            sites: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    /// The site's record, created (as just seen) if it has none.
    pub fn site(&self, site: &str) -> Arc<SiteActivity> {
        if let Some(found) = self.sites.load().get(site) {
            return found.clone();
        }
        let now = self.now();
        let mut created = None;
        self.sites.rcu(|sites| {
            let mut sites = HashMap::clone(sites);
            let entry = sites
                .entry(site.to_owned())
                .or_insert_with(|| Arc::new(SiteActivity::new(now)))
                .clone();
            created = Some(entry);
            sites
        });
        created.expect("rcu ran at least once")
    }

    /// A request for `site` begins; `end_request` must follow.
    pub fn begin_request(&self, site: &str) -> Arc<SiteActivity> {
        let record = self.site(site);
        record.in_flight.fetch_add(1, Ordering::SeqCst);
        record.last_seen.store(self.now(), Ordering::Relaxed);
        record
    }

    pub fn end_request(&self, record: &SiteActivity) {
        record.last_seen.store(self.now(), Ordering::Relaxed);
        record.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    pub fn idle_for(&self, record: &SiteActivity) -> Duration {
        Duration::from_secs(
            self.now()
                .saturating_sub(record.last_seen.load(Ordering::Relaxed)),
        )
    }

    /// Marks the site as idle since now (its app was just stopped or just found running).
    pub fn reset(&self, record: &SiteActivity) {
        record.last_seen.store(self.now(), Ordering::Relaxed);
    }
}

impl SiteActivity {
    fn new(now: u64) -> Self {
        SiteActivity {
            last_seen: AtomicU64::new(now),
            in_flight: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Claims the site for stopping, unless a request is in progress. Paired with
    /// `begin_request` (both SeqCst), so either the request sees `stopping` and takes the
    /// cold-start path, or this sees the request and leaves the app alone.
    pub fn try_begin_stop(&self) -> bool {
        self.stopping.store(true, Ordering::SeqCst);
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            self.stopping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    pub fn end_stop(&self) {
        self.stopping.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_in_progress_keeps_the_app() {
        let activity = Activity::new();
        let record = activity.begin_request("a.example");
        assert!(!record.try_begin_stop());
        assert!(!record.is_stopping());
        activity.end_request(&record);
        assert!(record.try_begin_stop());
        assert!(
            activity.site("a.example").is_stopping(),
            "one record per site"
        );
        record.end_stop();
        assert!(!record.is_stopping());
    }

    #[test]
    fn records_are_shared_per_site() {
        let activity = Activity::new();
        let a = activity.site("a.example");
        let b = activity.site("b.example");
        assert!(Arc::ptr_eq(&a, &activity.site("a.example")));
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(activity.idle_for(&a), Duration::ZERO);
    }
}
