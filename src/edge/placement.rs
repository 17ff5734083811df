//! Which backend server a site lives on.

use crate::config::{BackendAddr, HashMode};
use pingora::lb::selection::Consistent;
use pingora::lb::{discovery, Backend, Backends, LoadBalancer};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

/// How far along the ketama ring to look; 160 points per unit of weight per backend.
const KETAMA_MAX_STEPS: usize = 256;

pub enum Placement {
    /// nginx's `hash $host consistent`: adding or removing a backend moves ~1/N of sites.
    Ketama(Arc<LoadBalancer<Consistent>>),
    /// The talk's nginx + Lua scheme: CPython 2's `hash(site) % len(backends)`.
    Modulo(Vec<SocketAddr>),
}

impl Placement {
    pub fn pick(&self, site: &str) -> Option<SocketAddr> {
        match self {
            Placement::Ketama(lb) => lb
                .select(site.as_bytes(), KETAMA_MAX_STEPS)
                .and_then(|backend| backend.addr.as_inet().copied()),
            Placement::Modulo(backends) => {
                let len = i64::try_from(backends.len()).ok().filter(|len| *len > 0)?;
                let index = python2_string_hash(site.as_bytes()).rem_euclid(len);
                backends.get(index as usize).copied()
            }
        }
    }
}

/// The ketama load balancer over `backends`; it is filled by its first `update()`, which
/// Pingora runs when the balancer is started as a background service.
pub fn ketama_balancer(backends: &[BackendAddr]) -> LoadBalancer<Consistent> {
    let set: BTreeSet<Backend> = backends
        .iter()
        .map(|b| {
            Backend::new_with_weight(&b.addr.to_string(), b.weight)
                .expect("validated ip:port parses")
        })
        .collect();
    LoadBalancer::from_backends(Backends::new(discovery::Static::new(set)))
}

pub fn placement(mode: HashMode, backends: &[BackendAddr]) -> Placement {
    match mode {
        HashMode::Ketama => Placement::Ketama(Arc::new(ketama_balancer(backends))),
        HashMode::Modulo => Placement::Modulo(backends.iter().map(|b| b.addr).collect()),
    }
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

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, 0, 1], 8000 + i)))
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
        for (site, n, index) in [
            ("www.obeythetestinggoat.com", 3, 1),
            ("www.obeythetestinggoat.com", 4, 1),
            ("example.com", 3, 2),
            ("example.com", 4, 0),
        ] {
            let list = addrs(n);
            let placement = Placement::Modulo(list.clone());
            assert_eq!(placement.pick(site), Some(list[index]), "{site} over {n}");
        }
        assert_eq!(Placement::Modulo(Vec::new()).pick("a.example"), None);
    }
}
