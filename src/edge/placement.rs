//! Which backend server a site lives on.

use super::backends::{BackendList, Discovery};
use super::health::ObservedHealthCheck;
use crate::config::{BackendAddr, HashMode};
use pingora::lb::selection::Consistent;
use pingora::lb::{Backend, Backends, LoadBalancer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How often `edge.backends_file` is read again.
const BACKENDS_FILE_INTERVAL: Duration = Duration::from_secs(1);

/// How far along the ketama ring to look for a backend that is up: 160 points per unit of
/// weight per backend, so a heavy backend that is down can cover many points in a row.
const KETAMA_MAX_STEPS: usize = 16 * 1024;

/// How far the first, optimistic look goes: one backend's points in a row.
const KETAMA_FIRST_STEPS: usize = 160;

/// Which backend serves a site. Both modes skip backends that are down (or already tried
/// for this request) while leaving every other site where it is.
pub struct Placement {
    mode: HashMode,
    /// The ketama ring and the health of every backend, kept by Pingora's balancer, which
    /// runs as a background service (discovery and health checks).
    balancer: Arc<LoadBalancer<Consistent>>,
    list: Arc<BackendList>,
}

impl Placement {
    /// With `health_checks`, the balancer checks every backend at that interval; without,
    /// every backend counts as up.
    pub fn new(
        mode: HashMode,
        list: Arc<BackendList>,
        health_checks: Option<(ObservedHealthCheck, Duration)>,
    ) -> Self {
        let mut balancer =
            LoadBalancer::from_backends(Backends::new(Box::new(Discovery(list.clone()))));
        if list.watches_file() {
            balancer.update_frequency = Some(BACKENDS_FILE_INTERVAL);
        }
        if let Some((check, interval)) = health_checks {
            balancer.set_health_check(Box::new(check));
            balancer.health_check_frequency = Some(interval);
            balancer.parallel_health_check = true;
        }
        Placement {
            mode,
            balancer: Arc::new(balancer),
            list,
        }
    }

    pub fn balancer(&self) -> &Arc<LoadBalancer<Consistent>> {
        &self.balancer
    }

    /// The backend for `site`, among those that are up and not in `exclude`. When none is up,
    /// health is ignored (as nginx does when all its servers have failed): a health check can
    /// be wrong, and trying costs less than refusing every request.
    pub fn pick(&self, site: &str, exclude: &[SocketAddr]) -> Option<SocketAddr> {
        // Nearly always the site's own backend is up: a short walk finds it with one health
        // lookup. A longer walk would find the same backend (the first one up on the ring),
        // so past this only the outage case below remains.
        let up_and_usable = usable(exclude, true);
        if self.mode == HashMode::Ketama {
            let first_up = self.ketama(site, KETAMA_FIRST_STEPS, &up_and_usable);
            if first_up.is_some() {
                return first_up;
            }
        }
        // Checked first (a few lookups), so that an outage does not also walk the whole ring.
        let any_up = self
            .list
            .ordered()
            .iter()
            .any(|b| up_and_usable(b, self.balancer.backends().ready(b)));
        self.pick_among(site, exclude, any_up)
    }

    fn ketama(
        &self,
        site: &str,
        steps: usize,
        usable: impl Fn(&Backend, bool) -> bool,
    ) -> Option<SocketAddr> {
        self.balancer
            .select_with(site.as_bytes(), steps, usable)
            .and_then(|b| b.addr.as_inet().copied())
    }

    fn pick_among(&self, site: &str, exclude: &[SocketAddr], only_up: bool) -> Option<SocketAddr> {
        let usable = usable(exclude, only_up);
        match self.mode {
            HashMode::Ketama => self.ketama(site, KETAMA_MAX_STEPS, usable),
            HashMode::Modulo => {
                let list = self.list.ordered();
                let hash = python2_string_hash(site.as_bytes());
                let primary = &list[index(hash, list.len())?];
                if usable(primary, self.balancer.backends().ready(primary)) {
                    return primary.addr.as_inet().copied();
                }
                // The primary is down: a second choice among the usable ones, so only the
                // down backend's sites move.
                let others: Vec<&Backend> = list
                    .iter()
                    .filter(|b| usable(b, self.balancer.backends().ready(b)))
                    .collect();
                others
                    .get(index(hash, others.len())?)?
                    .addr
                    .as_inet()
                    .copied()
            }
        }
    }
}

/// Whether a backend may take the request: not in `exclude`, and up when `only_up`.
fn usable(exclude: &[SocketAddr], only_up: bool) -> impl Fn(&Backend, bool) -> bool + '_ {
    move |b, up| (up || !only_up) && !b.addr.as_inet().is_some_and(|a| exclude.contains(a))
}

fn index(hash: i64, len: usize) -> Option<usize> {
    let len = i64::try_from(len).ok().filter(|len| *len > 0)?;
    usize::try_from(hash.rem_euclid(len)).ok()
}

/// Placement of sites over `backends` as every edge computes it when all are up, for the
/// preview command and tests: the same code as the running edge, run once.
pub fn offline(mode: HashMode, backends: &[BackendAddr]) -> Placement {
    let placement = Placement::new(mode, Arc::new(BackendList::new(backends, None, mode)), None);
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime for one update")
        .block_on(placement.balancer.update())
        .expect("a static list always updates");
    placement
}

/// CPython 2's `str.__hash__` on a 64-bit build without hash randomisation (`-R` off), so
/// that Herald places sites exactly where the talk's Lua port of it did.
pub fn python2_string_hash(s: &[u8]) -> i64 {
    let Some(&first) = s.first() else {
        return 0;
    };
    let mut x: i64 = i64::from(first) << 7;
    for &byte in s {
        x = x.wrapping_mul(1_000_003) ^ i64::from(byte);
    }
    x ^= s.len() as i64;
    if x == -1 {
        -2
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: u16) -> Vec<BackendAddr> {
        (0..n)
            .map(|i| BackendAddr {
                addr: SocketAddr::from(([10, 0, 0, 1], 8000 + i)),
                weight: 1,
            })
            .collect()
    }

    #[test]
    fn python2_hash_matches_cpython() {
        assert_eq!(python2_string_hash(b"a"), 12416037344);
        assert_eq!(
            python2_string_hash(b"www.obeythetestinggoat.com"),
            -7870546753600931735
        );
        assert_eq!(python2_string_hash(b"example.com"), -6362291844022706380);
        assert_eq!(python2_string_hash(b""), 0);
    }

    #[test]
    fn modulo_indexes_the_list_with_floor_modulo() {
        for (site, n, expected) in [
            ("www.obeythetestinggoat.com", 3, 1),
            ("www.obeythetestinggoat.com", 4, 1),
            ("example.com", 3, 2),
            ("example.com", 4, 0),
        ] {
            let list = backends(n);
            let placement = offline(HashMode::Modulo, &list);
            assert_eq!(
                placement.pick(site, &[]),
                Some(list[expected].addr),
                "{site} over {n}"
            );
        }
    }

    fn sites() -> impl Iterator<Item = String> {
        (0..2000).map(|i| format!("site{i}.example.org"))
    }

    #[test]
    fn failover_moves_only_the_sites_of_the_backend_that_is_out() {
        for mode in [HashMode::Ketama, HashMode::Modulo] {
            let list = backends(4);
            let placement = offline(mode, &list);
            let out = list[2].addr;
            let mut moved = 0;
            for site in sites() {
                let first = placement.pick(&site, &[]).unwrap();
                let second = placement.pick(&site, &[out]).unwrap();
                assert_ne!(second, out, "{mode:?} {site}");
                if first == out {
                    moved += 1;
                } else {
                    assert_eq!(
                        first, second,
                        "{mode:?}: {site} moved although its backend is fine"
                    );
                }
            }
            assert!(
                (300..700).contains(&moved),
                "{mode:?}: {moved} of 2000 sites were on one of 4"
            );
            // With every backend excluded there is nowhere to go.
            let all: Vec<SocketAddr> = list.iter().map(|b| b.addr).collect();
            assert_eq!(placement.pick("a.example", &all), None);
        }
    }

    #[test]
    fn a_disabled_backend_is_skipped_like_a_down_one() {
        let list = backends(3);
        let placement = offline(HashMode::Modulo, &list);
        let site = "example.com"; // index 2 of 3
        let down = Backend::new(&list[2].addr.to_string()).unwrap();
        placement.balancer().backends().set_enable(&down, false);
        let chosen = placement.pick(site, &[]).unwrap();
        assert_ne!(chosen, list[2].addr);
        let hash = python2_string_hash(site.as_bytes());
        assert_eq!(
            chosen,
            list[index(hash, 2).unwrap()].addr,
            "the second choice indexes the usable list"
        );
    }

    #[test]
    fn with_every_backend_down_sites_still_go_to_their_own() {
        for mode in [HashMode::Ketama, HashMode::Modulo] {
            let list = backends(3);
            let placement = offline(mode, &list);
            let before: Vec<_> = sites().map(|s| placement.pick(&s, &[])).collect();
            for b in &list {
                let backend = Backend::new(&b.addr.to_string()).unwrap();
                placement.balancer().backends().set_enable(&backend, false);
            }
            let after: Vec<_> = sites().map(|s| placement.pick(&s, &[])).collect();
            assert_eq!(before, after, "{mode:?}");
        }
    }

    #[test]
    fn ketama_adding_one_of_five_moves_about_a_fifth() {
        let before = offline(HashMode::Ketama, &backends(4));
        let after = offline(HashMode::Ketama, &backends(5));
        let moved = sites()
            .filter(|s| before.pick(s, &[]) != after.pick(s, &[]))
            .count();
        assert!(
            (300..520).contains(&moved),
            "{moved} of 2000 moved; ideal 400"
        );
        // Every moved site moved to the new backend.
        let new = backends(5)[4].addr;
        assert!(sites().all(
            |s| before.pick(&s, &[]) == after.pick(&s, &[]) || after.pick(&s, &[]) == Some(new)
        ));
    }
}
