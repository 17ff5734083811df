//! At most `max_orders_per_hour` orders started in any hour (a sliding window), and none
//! before a time the ACME server asked for (its Retry-After, or a rate-limit error).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

const HOUR: Duration = Duration::from_secs(3600);

pub struct Pacing {
    per_hour: usize,
    started: VecDeque<Instant>,
    paused_until: Option<Instant>,
}

impl Pacing {
    pub fn new(per_hour: u32) -> Self {
        Pacing {
            per_hour: per_hour as usize,
            started: VecDeque::new(),
            paused_until: None,
        }
    }

    /// When the next order may start: `now`, or later.
    pub fn next_turn(&mut self, now: Instant) -> Instant {
        while self
            .started
            .front()
            .is_some_and(|at| now.duration_since(*at) >= HOUR)
        {
            self.started.pop_front();
        }
        let window = if self.started.len() < self.per_hour {
            now
        } else {
            self.started[self.started.len() - self.per_hour] + HOUR
        };
        window.max(self.paused_until.unwrap_or(now))
    }

    pub fn started(&mut self, at: Instant) {
        self.started.push_back(at);
    }

    pub fn pause_until(&mut self, until: Instant) {
        self.paused_until = Some(self.paused_until.map_or(until, |held| held.max(until)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hour_holds_at_most_the_limit() {
        let mut pacing = Pacing::new(2);
        let t0 = Instant::now();
        assert_eq!(pacing.next_turn(t0), t0);
        pacing.started(t0);
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(pacing.next_turn(t1), t1);
        pacing.started(t1);
        let t2 = t0 + Duration::from_secs(120);
        assert_eq!(pacing.next_turn(t2), t0 + HOUR);
        pacing.started(t0 + HOUR);
        assert_eq!(pacing.next_turn(t0 + HOUR), t1 + HOUR);
    }

    #[test]
    fn a_pause_delays_every_order() {
        let mut pacing = Pacing::new(10);
        let t0 = Instant::now();
        pacing.pause_until(t0 + Duration::from_secs(300));
        pacing.pause_until(t0 + Duration::from_secs(100));
        assert_eq!(pacing.next_turn(t0), t0 + Duration::from_secs(300));
    }
}
