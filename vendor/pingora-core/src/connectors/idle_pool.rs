// HERALD PATCH (PATCHES.md, "idle pool"): not part of Pingora 0.9.1.
//
// Idle upstream connections kept in a map behind one short lock and watched by one sweeper task
// per connector. Pingora 0.9.1 wraps each returned connection in an `Arc<Mutex>`, puts it in a
// `pingora_pool::ConnectionPool` (two oneshot channels per entry) and spawns a task per return
// that watches it until it is taken again: a task spawned, polled, woken and dropped for every
// proxied request on a kept-alive upstream. Here a return is a push, a take is a pop.
//
// What the watcher task did is done by the sweeper, every `SWEEP_EVERY`: connections past their
// idle timeout, closed by the server or with unexpected data waiting are dropped (so a server's
// close is seen within that interval instead of at once). A take checks the same before reuse.

use super::test_reusable_stream;
use super::PoolCallback;
use crate::protocols::Stream;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often idle connections are checked for closes and timeouts.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Idle {
    stream: Stream,
    since: Instant,
    timeout: Option<Duration>,
}

impl Idle {
    fn expired(&self, now: Instant) -> bool {
        self.timeout
            .is_some_and(|timeout| now.saturating_duration_since(self.since) >= timeout)
    }
}

#[derive(Default)]
struct Entries {
    /// Per peer (`Peer::reuse_hash`), oldest first.
    by_key: HashMap<u64, Vec<Idle>>,
    count: usize,
}

pub(crate) struct IdlePool {
    capacity: usize,
    entries: Mutex<Entries>,
    sweeper_started: AtomicBool,
    unexpected_data: Arc<AtomicU64>,
    evicted_callback: Option<PoolCallback>,
}

impl IdlePool {
    pub(crate) fn new(
        capacity: usize,
        unexpected_data: Arc<AtomicU64>,
        evicted_callback: Option<PoolCallback>,
    ) -> Self {
        IdlePool {
            capacity,
            entries: Mutex::new(Entries::default()),
            sweeper_started: AtomicBool::new(false),
            unexpected_data,
            evicted_callback,
        }
    }

    /// Keeps `stream` for reuse by `key`; beyond the capacity the connection idle longest goes.
    pub(crate) fn put(self: &Arc<Self>, key: u64, stream: Stream, timeout: Option<Duration>) {
        if self.capacity == 0 {
            return;
        }
        self.start_sweeper();
        let now = Instant::now();
        let evicted = {
            let mut entries = self.entries.lock();
            let evicted = if entries.count >= self.capacity {
                entries.remove_oldest()
            } else {
                None
            };
            entries.by_key.entry(key).or_default().push(Idle {
                stream,
                since: now,
                timeout,
            });
            entries.count += 1;
            evicted
        };
        // Closed outside the lock.
        if let Some(idle) = evicted {
            self.evicted(idle, now);
        }
    }

    /// The connection to `key` returned last that is still usable: within its idle timeout,
    /// not closed by the server, no data waiting.
    pub(crate) fn take(&self, key: u64) -> Option<Stream> {
        let now = Instant::now();
        loop {
            let mut idle = {
                let mut entries = self.entries.lock();
                let list = entries.by_key.get_mut(&key)?;
                let idle = list.pop();
                if list.is_empty() {
                    entries.by_key.remove(&key);
                }
                let idle = idle?;
                entries.count -= 1;
                idle
            };
            if !idle.expired(now) && test_reusable_stream(&mut idle.stream, &self.unexpected_data) {
                return Some(idle.stream);
            }
            self.evicted(idle, now);
        }
    }

    /// Drops every connection past its idle timeout, closed, or with unexpected data.
    fn sweep(&self) {
        let now = Instant::now();
        let mut gone = Vec::new();
        {
            let mut entries = self.entries.lock();
            let Entries { by_key, count } = &mut *entries;
            by_key.retain(|_, list| {
                for mut idle in std::mem::take(list) {
                    if !idle.expired(now)
                        && test_reusable_stream(&mut idle.stream, &self.unexpected_data)
                    {
                        list.push(idle);
                    } else {
                        gone.push(idle);
                        *count -= 1;
                    }
                }
                !list.is_empty()
            });
        }
        for idle in gone {
            self.evicted(idle, now);
        }
    }

    fn evicted(&self, idle: Idle, now: Instant) {
        if let Some(callback) = &self.evicted_callback {
            callback(now.saturating_duration_since(idle.since));
        }
    }

    /// One sweeper per pool, started with its first connection, ending with the pool.
    fn start_sweeper(self: &Arc<Self>) {
        // A read first: every return comes here, and only the first one writes.
        if self.sweeper_started.load(Ordering::Relaxed)
            || self.sweeper_started.swap(true, Ordering::Relaxed)
        {
            return;
        }
        let pool: Weak<IdlePool> = Arc::downgrade(self);
        pingora_runtime::current_handle().spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                match pool.upgrade() {
                    Some(pool) => pool.sweep(),
                    None => return,
                }
            }
        });
    }
}

impl Entries {
    fn remove_oldest(&mut self) -> Option<Idle> {
        let (&key, _) = self
            .by_key
            .iter()
            .filter_map(|(key, list)| list.first().map(|idle| (key, idle.since)))
            .min_by_key(|(_, since)| *since)?;
        let list = self.by_key.get_mut(&key)?;
        let idle = list.remove(0);
        if list.is_empty() {
            self.by_key.remove(&key);
        }
        self.count -= 1;
        Some(idle)
    }
}
