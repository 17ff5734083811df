//! Counting per client IP, for the limits that cap what one address may hold at once: its
//! requests in progress (`max_connections_per_client`) and its open connections
//! (`max_open_connections_per_client`).

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
}
