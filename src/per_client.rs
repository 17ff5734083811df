//! Counting per client IP, for the limits that cap what one address may hold at once: its
//! requests in progress (`max_connections_per_client`) and its open connections
//! (`max_open_connections_per_client`). An IPv6 client is its /64: one host is given a whole
//! /64 (and picks new addresses in it at will), so counting single addresses would count
//! nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// How many of something each client IP holds, up to a limit.
pub struct ClientLimiter {
    limit: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

impl ClientLimiter {
    pub fn new(limit: usize) -> Arc<ClientLimiter> {
        Arc::new(ClientLimiter {
            limit,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A place in `ip`'s count, or `None` when it already holds `limit`.
    pub fn try_enter(limiter: &Arc<ClientLimiter>, ip: IpAddr) -> Option<ClientSlot> {
        let ip = client_key(ip);
        let mut held = limiter.held.lock().expect("limiter lock");
        let count = held.entry(ip).or_default();
        if *count >= limiter.limit {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            limiter: limiter.clone(),
            ip,
        })
    }
}

/// What a client is counted by: its IPv4 address, or its IPv6 /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

/// One place in a client's count, given back when dropped.
pub struct ClientSlot {
    limiter: Arc<ClientLimiter>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut held = self.limiter.held.lock().expect("limiter lock");
        if let Some(count) = held.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_limit_and_slots_come_back() {
        let limiter = ClientLimiter::new(2);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let first = ClientLimiter::try_enter(&limiter, a).unwrap();
        let _second = ClientLimiter::try_enter(&limiter, a).unwrap();
        assert!(ClientLimiter::try_enter(&limiter, a).is_none());
        assert!(
            ClientLimiter::try_enter(&limiter, b).is_some(),
            "other clients are counted apart"
        );
        drop(first);
        assert!(ClientLimiter::try_enter(&limiter, a).is_some());
        drop(_second);
        assert!(
            limiter.held.lock().unwrap().is_empty(),
            "no entry is left for idle clients"
        );
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        let limiter = ClientLimiter::new(1);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _slot = ClientLimiter::try_enter(&limiter, one).unwrap();
        assert!(ClientLimiter::try_enter(&limiter, same_64).is_none());
        assert!(ClientLimiter::try_enter(&limiter, other_64).is_some());
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.9".parse::<IpAddr>().unwrap());
    }
}
