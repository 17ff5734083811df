//! Who listens on an app's socket, for the owner check made on every connection: the uid it
//! listened with (`SO_PEERCRED`) and, when that is root (uWSGI binds as root, then drops to
//! the vassal's `uid`), the real, effective and saved uids of that process now.
//!
//! Those come from `/proc/PID/status`, which the kernel renders whole (signal masks, memory,
//! capabilities) on each read: they are read only when the first uid does not settle it, and
//! kept for a second per pid. Another tenant cannot change a process's users, so a change
//! within that second is the listening process's own doing; and a pid reused by a new
//! listener would have to be a root process the emperor started on this very socket.

use once_cell::sync::Lazy;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const FRESH: Duration = Duration::from_secs(1);
/// Entries kept at most (a backend has as many listening apps as it runs).
const KEPT: usize = 4096;

/// Real, effective and saved uid; `None`: the process is gone.
type Uids = Option<[u32; 3]>;

/// By pid: when they were read, and what.
static RECENT: Lazy<Mutex<HashMap<u32, (Instant, Uids)>>> =
    Lazy::new(|| Mutex::new(HashMap::new()));

pub struct Listener {
    uid: u32,
    now: Option<[u32; 3]>,
}

impl Listener {
    /// What is known of the listener: its uid, and its process's uids if needed to decide
    /// whether it is `owner`'s.
    pub fn of(uid: u32, pid: Option<i32>, owner: u32) -> Listener {
        let now = if uid == 0 && owner != 0 {
            pid.and_then(|pid| u32::try_from(pid).ok())
                .and_then(recent_uids_of)
        } else {
            None
        };
        Listener { uid, now }
    }

    /// uWSGI binds and listens as root, then drops to the vassal's `uid`: a socket listened
    /// on by root belongs to the owner when its listening process now runs as the owner, with
    /// no way back to root (real, effective and saved uid all the owner's).
    /// A root listener whose process is still root in every way: an app that has not dropped
    /// to its user yet (or one that never will).
    pub fn still_root(&self) -> bool {
        self.uid == 0 && self.now == Some([0; 3])
    }

    pub fn is_owner(&self, owner: u32) -> bool {
        self.uid == owner || (self.uid == 0 && self.now == Some([owner; 3]))
    }
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "uid {}", self.uid)?;
        match self.now {
            Some([real, effective, saved]) if self.uid == 0 => write!(
                f,
                " (its process now runs as uid {real}, effective {effective}, saved {saved})"
            ),
            _ => Ok(()),
        }
    }
}

fn recent_uids_of(pid: u32) -> Option<[u32; 3]> {
    let now = Instant::now();
    if let Some((at, uids)) = RECENT.lock().expect("never poisoned").get(&pid) {
        if now.duration_since(*at) < FRESH {
            return *uids;
        }
    }
    let uids = uids_of(pid);
    if uids == Some([0; 3]) {
        // Not kept: a process still root may be an app about to drop to its user.
        return uids;
    }
    let mut recent = RECENT.lock().expect("never poisoned");
    if recent.len() >= KEPT {
        recent.retain(|_, (at, _)| now.duration_since(*at) < FRESH);
    }
    recent.insert(pid, (now, uids));
    uids
}

/// A process's real, effective and saved uids, from `/proc/PID/status`.
fn uids_of(pid: u32) -> Option<[u32; 3]> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_uids(&status)
}

fn parse_uids(status: &str) -> Option<[u32; 3]> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = line.split_whitespace().map(|id| id.parse::<u32>().ok());
    Some([ids.next()??, ids.next()??, ids.next()??])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_listener_belongs_to_the_user_it_dropped_to_for_good() {
        let status = "Name:\tuwsgi\nUid:\t999\t999\t999\t999\nGid:\t995\t995\t995\t995\n";
        assert_eq!(parse_uids(status), Some([999; 3]));
        let owner = |uid, now| Listener { uid, now }.is_owner(999);
        assert!(owner(999, None), "listened as the owner");
        assert!(owner(0, Some([999; 3])), "root, then dropped to the owner");
        assert!(!owner(0, Some([999, 999, 0])), "could become root again");
        assert!(!owner(0, Some([998; 3])), "dropped to someone else");
        assert!(!owner(0, None), "its process is gone");
        assert!(!owner(998, Some([999; 3])), "listened as someone else");
    }

    #[test]
    fn a_listener_still_root_is_not_judged_yet_nor_kept() {
        let starting = Listener {
            uid: 0,
            now: Some([0; 3]),
        };
        assert!(starting.still_root() && !starting.is_owner(999));
        let dropped = Listener {
            uid: 0,
            now: Some([999; 3]),
        };
        assert!(!dropped.still_root() && dropped.is_owner(999));
        assert!(!Listener {
            uid: 999,
            now: None
        }
        .still_root());
        // As root, this test's own process reads as still root: read again every time.
        let me = std::process::id();
        if uids_of(me) == Some([0; 3]) {
            assert_eq!(recent_uids_of(me), Some([0; 3]));
            assert!(!RECENT.lock().unwrap().contains_key(&me));
        }
    }

    #[test]
    fn a_process_uids_are_read_only_when_needed() {
        let me = std::process::id() as i32;
        let read = Listener::of(0, Some(me), 999);
        assert!(read.now.is_some(), "root listener, another owner: read");
        assert!(
            Listener::of(999, Some(me), 999).now.is_none(),
            "settled by the uid"
        );
        assert!(
            Listener::of(0, Some(me), 0).now.is_none(),
            "root's own site"
        );
        assert_eq!(
            Listener::of(0, Some(me), 999).now,
            read.now,
            "kept for a second"
        );
    }
}
