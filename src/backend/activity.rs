//! When each site last had a request, and whether one is in progress, so idle apps can be
//! stopped. Recording a request is an atomic store on a record found in a concurrent map
//! (`DashMap`, sharded): a site's first request adds its record without copying the others,
//! and records of sites long idle are forgotten, so the map holds the sites that had traffic
//! lately, not every site that exists.

use dashmap::DashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Activity {
    epoch: Instant,
    sites: DashMap<String, Arc<SiteActivity>>,
}

pub struct SiteActivity {
    /// Milliseconds since `Activity::epoch` of the last request's start or end.
    last_seen: AtomicU64,
    in_flight: AtomicUsize,
    /// Set while the reaper stops the app; requests then take the cold-start path.
    stopping: AtomicBool,
}

impl Activity {
    pub fn new() -> Self {
        Activity {
            epoch: Instant::now(),
            sites: DashMap::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The site's record, created (as just seen) if it has none.
    pub fn site(&self, site: &str) -> Arc<SiteActivity> {
        if let Some(found) = self.sites.get(site) {
            return found.clone();
        }
        let now = self.now();
        self.sites
            .entry(site.to_owned())
            .or_insert_with(|| Arc::new(SiteActivity::new(now)))
            .clone()
    }

    /// A request for `site` begins; `end_request` must follow. Counted while the map's lock
    /// on the record is held, so `forget_idle` never drops a record a request is starting on.
    pub fn begin_request(&self, site: &str) -> Arc<SiteActivity> {
        let now = self.now();
        let begin = |record: &Arc<SiteActivity>| {
            record.in_flight.fetch_add(1, Ordering::SeqCst);
            record.last_seen.store(now, Ordering::Relaxed);
            record.clone()
        };
        if let Some(found) = self.sites.get(site) {
            return begin(&found);
        }
        let entry = self
            .sites
            .entry(site.to_owned())
            .or_insert_with(|| Arc::new(SiteActivity::new(now)));
        begin(&entry)
    }

    pub fn end_request(&self, record: &SiteActivity) {
        record.last_seen.store(self.now(), Ordering::Relaxed);
        record.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    pub fn idle_for(&self, record: &SiteActivity) -> Duration {
        Duration::from_millis(
            self.now()
                .saturating_sub(record.last_seen.load(Ordering::Relaxed)),
        )
    }

    /// Marks the site as idle since now (its app was just stopped or just found running).
    pub fn reset(&self, record: &SiteActivity) {
        record.last_seen.store(self.now(), Ordering::Relaxed);
    }

    /// Whether `site` has a record (it had a request and was not forgotten since).
    pub fn has_record(&self, site: &str) -> bool {
        self.sites.contains_key(site)
    }

    /// Forgets the records of sites with no request in progress, idle for `idle` or more;
    /// how many are left.
    pub fn forget_idle(&self, idle: Duration) -> usize {
        self.sites.retain(|_, record| {
            record.in_flight.load(Ordering::SeqCst) > 0
                || record.is_stopping()
                || self.idle_for(record) < idle
        });
        self.sites.len()
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
    fn idle_records_are_forgotten_busy_ones_kept() {
        let activity = Activity::new();
        let busy = activity.begin_request("busy.example");
        let _idle = activity.site("idle.example");
        assert_eq!(
            activity.forget_idle(Duration::ZERO),
            1,
            "the busy one stays"
        );
        assert!(Arc::ptr_eq(&busy, &activity.site("busy.example")));
        activity.end_request(&busy);
        let _again = activity.site("idle.example");
        assert_eq!(
            activity.forget_idle(Duration::from_secs(3600)),
            2,
            "not idle long enough"
        );
        assert_eq!(activity.forget_idle(Duration::ZERO), 0);
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
