//! `max_starts_per_client`: how many distinct sites one client may cold-start per minute. A
//! visitor starts a site or two; a client walking the certificate transparency logs to start
//! every app gets 429 for further cold sites, while its requests to running sites, and
//! everyone else's, go on. The client is the browser (what a trusted edge said), counted by
//! its address or IPv6 /64.

use crate::per_client::client_key;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
/// Past this many clients, windows that have ended are dropped.
const PRUNE_ABOVE: usize = 10_000;

pub struct StartLimit {
    limit: usize,
    clients: Mutex<HashMap<IpAddr, Window>>,
}

struct Window {
    began: Instant,
    sites: HashSet<String>,
}

impl StartLimit {
    pub fn new(limit: usize) -> StartLimit {
        StartLimit {
            limit,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `client` may cold-start `site` now (then it counts); `Err` holds how long until
    /// it may again.
    pub fn allow(&self, client: IpAddr, site: &str) -> Result<(), Duration> {
        self.allow_at(client, site, Instant::now())
    }

    fn allow_at(&self, client: IpAddr, site: &str, now: Instant) -> Result<(), Duration> {
        let mut clients = self.clients.lock().expect("never poisoned");
        if clients.len() > PRUNE_ABOVE {
            clients.retain(|_, window| now.duration_since(window.began) < WINDOW);
        }
        let window = clients.entry(client_key(client)).or_insert_with(|| Window {
            began: now,
            sites: HashSet::new(),
        });
        if now.duration_since(window.began) >= WINDOW {
            window.began = now;
            window.sites.clear();
        }
        if window.sites.contains(site) {
            return Ok(());
        }
        if window.sites.len() >= self.limit {
            return Err(WINDOW.saturating_sub(now.duration_since(window.began)));
        }
        window.sites.insert(site.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_starts_its_share_of_sites_per_minute_and_others_theirs() {
        let limit = StartLimit::new(3);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t = Instant::now();
        for i in 0..3 {
            assert_eq!(limit.allow_at(a, &format!("s{i}.example"), t), Ok(()));
        }
        assert_eq!(
            limit.allow_at(a, "s1.example", t),
            Ok(()),
            "a site it started"
        );
        let wait = limit.allow_at(a, "s3.example", t + Duration::from_secs(20));
        assert_eq!(wait, Err(Duration::from_secs(40)));
        assert_eq!(limit.allow_at(b, "s3.example", t), Ok(()), "another client");
        assert_eq!(
            limit.allow_at(a, "s3.example", t + WINDOW),
            Ok(()),
            "a new minute"
        );
    }
}
