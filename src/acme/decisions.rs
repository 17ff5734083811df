//! Names not to order for now: denied by `ask` (or `ask` did not answer), or whose order
//! failed, each until its back-off ends. A flood of random SNI names costs one `ask` per name
//! at most, and memory stays bounded: at `CAPACITY`, expired entries go first; if all are
//! current, the new one is not remembered (it will be asked about again).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const CAPACITY: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    Denied,
    AskFailed,
    OrderFailed,
}

impl Why {
    /// First back-off; it doubles with each repeat, up to `MAX_BACKOFF`.
    fn first_backoff(self) -> Duration {
        match self {
            Why::Denied => Duration::from_secs(600),
            Why::AskFailed => Duration::from_secs(30),
            Why::OrderFailed => Duration::from_secs(300),
        }
    }
}

const MAX_BACKOFF: Duration = Duration::from_secs(86_400);

struct Entry {
    until: Instant,
    repeats: u32,
}

#[derive(Default)]
pub struct Decisions {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Decisions {
    /// Whether `name` is in a back-off now.
    pub fn holds_back(&self, name: &str, now: Instant) -> bool {
        self.entries
            .lock()
            .expect("never poisoned")
            .get(name)
            .is_some_and(|entry| entry.until > now)
    }

    /// `name` is held back for its next back-off.
    pub fn hold_back(&self, name: &str, why: Why, now: Instant) {
        let mut entries = self.entries.lock().expect("never poisoned");
        if !entries.contains_key(name) && entries.len() >= CAPACITY {
            entries.retain(|_, entry| entry.until > now);
            if entries.len() >= CAPACITY {
                return;
            }
        }
        let entry = entries.entry(name.to_owned()).or_insert(Entry {
            until: now,
            repeats: 0,
        });
        let backoff = why
            .first_backoff()
            .saturating_mul(1 << entry.repeats.min(16))
            .min(MAX_BACKOFF);
        entry.until = now + backoff;
        entry.repeats = entry.repeats.saturating_add(1);
    }

    /// `name` got its certificate: no back-off left.
    pub fn forget(&self, name: &str) {
        self.entries.lock().expect("never poisoned").remove(name);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_and_ends() {
        let decisions = Decisions::default();
        let start = Instant::now();
        decisions.hold_back("a.example", Why::Denied, start);
        assert!(decisions.holds_back("a.example", start + Duration::from_secs(599)));
        assert!(!decisions.holds_back("a.example", start + Duration::from_secs(601)));
        let again = start + Duration::from_secs(601);
        decisions.hold_back("a.example", Why::Denied, again);
        assert!(decisions.holds_back("a.example", again + Duration::from_secs(1199)));
        assert!(!decisions.holds_back("a.example", again + Duration::from_secs(1201)));
        assert!(!decisions.holds_back("b.example", start));
        decisions.forget("a.example");
        assert!(!decisions.holds_back("a.example", again));
    }

    #[test]
    fn memory_is_bounded_and_expired_entries_go_first() {
        let decisions = Decisions::default();
        let start = Instant::now();
        for i in 0..CAPACITY {
            decisions.hold_back(&format!("n{i}.example"), Why::AskFailed, start);
        }
        decisions.hold_back("late.example", Why::Denied, start);
        assert_eq!(decisions.len(), CAPACITY);
        assert!(!decisions.holds_back("late.example", start));
        let later = start + Duration::from_secs(31);
        decisions.hold_back("late.example", Why::Denied, later);
        assert_eq!(decisions.len(), 1);
        assert!(decisions.holds_back("late.example", later));
    }
}
