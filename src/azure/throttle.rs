//! Client-side throttling. Azure's limits are per principal, so every request the operator makes draws on
//! one budget: when one request is throttled, all of them should wait, not just the reconcile that saw the
//! 429. One `Throttle` per budget (Graph reads, Graph writes, ARM reads, writes, deletes) does three things:
//!
//! - a 429's `Retry-After` pauses every request of the budget until then (plus jitter, so they do not all
//!   return in the same millisecond);
//! - a response saying the budget is nearly spent (`x-ms-ratelimit-remaining-*` below what is in flight, or
//!   `x-ms-throttle-limit-percentage` at its top) pauses briefly before Azure has to say 429;
//! - the requests in flight adapt: half as many after a throttle, one more per round of successes once no
//!   throttle has been seen for a while (additive increase, multiplicative decrease), so that the burst
//!   after each pause stays small.
//!
//! Hand-written because no crate does this for a client: tower's limits are static, governor paces a rate
//! known in advance, and the rate here is only learned from Azure's answers.

use std::{sync::Mutex, time::Duration};

use tokio::{sync::Notify, time::Instant};

/// The bounds of the adaptive limit on requests in flight.
const MIN_IN_FLIGHT: f64 = 1.0;
const MAX_IN_FLIGHT: f64 = 64.0;
const START_IN_FLIGHT: f64 = 16.0;
/// Several requests in flight see the same throttle: the limit is halved once per this window, not per 429.
const DECREASE_WINDOW: Duration = Duration::from_secs(1);
/// The longest pause: a longer Retry-After (minutes, when Azure's window is far off) would hold every request
/// of the budget, deletes included, that long. After this one request finds out whether it still holds,
/// and a reconcile that cannot wait shows `Throttled` and requeues for the whole Retry-After.
pub const MAX_PAUSE: Duration = Duration::from_secs(20);
/// How long to hold back when a response says the budget is nearly spent.
const NEAR_LIMIT_PAUSE: Duration = Duration::from_millis(500);
/// The limit grows again only after this long without a throttle: while Azure throttles, more requests in
/// flight only make more 429s.
const CALM: Duration = Duration::from_secs(5);

/// What a response said about the budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Signal {
    /// Accepted, with room left.
    Ok,
    /// Accepted, but the budget is nearly spent.
    NearLimit,
    /// Throttled: retry after this long.
    Throttled(Duration),
}

#[derive(Debug)]
struct State {
    limit: f64,
    in_flight: usize,
    paused_until: Option<Instant>,
    last_decrease: Option<Instant>,
    last_throttle: Option<Instant>,
}

impl State {
    fn allowed(&self) -> usize {
        self.limit.floor() as usize
    }

    fn decrease(&mut self, now: Instant) {
        if self
            .last_decrease
            .is_none_or(|t| now.duration_since(t) >= DECREASE_WINDOW)
        {
            self.limit = (self.limit / 2.0).max(MIN_IN_FLIGHT);
            self.last_decrease = Some(now);
        }
    }

    fn pause(&mut self, now: Instant, until: Instant) {
        let until = until.min(now + MAX_PAUSE);
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
    }

    /// Applies what a response said.
    fn learn(&mut self, signal: Signal, now: Instant) {
        match signal {
            Signal::Ok => {
                if self
                    .last_throttle
                    .is_none_or(|t| now.duration_since(t) >= CALM)
                {
                    self.limit = (self.limit + 1.0 / self.limit).min(MAX_IN_FLIGHT);
                }
            }
            // The budget refills while paused; fewer in flight would only slow the rate it allows.
            Signal::NearLimit => self.pause(now, now + NEAR_LIMIT_PAUSE),
            Signal::Throttled(after) => {
                self.last_throttle = Some(now);
                self.decrease(now);
                self.pause(now, now + after);
            }
        }
    }
}

#[derive(Debug)]
pub struct Throttle {
    state: Mutex<State>,
    freed: Notify,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            state: Mutex::new(State {
                limit: START_IN_FLIGHT,
                in_flight: 0,
                paused_until: None,
                last_decrease: None,
                last_throttle: None,
            }),
            freed: Notify::new(),
        }
    }
}

/// A place among the requests in flight; freed when dropped.
pub struct Permit<'a> {
    throttle: &'a Throttle,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let free = {
            let mut s = self.throttle.state.lock().expect("throttle lock");
            s.in_flight -= 1;
            s.allowed().saturating_sub(s.in_flight)
        };
        for _ in 0..free.max(1) {
            self.throttle.freed.notify_one();
        }
    }
}

impl Throttle {
    /// Waits until the budget is not paused and a place in flight is free.
    pub async fn acquire(&self) -> Permit<'_> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let pause = {
                let mut s = self.state.lock().expect("throttle lock");
                let now = Instant::now();
                match s.paused_until {
                    Some(until) if until > now => Some(until - now),
                    _ if s.in_flight < s.allowed().max(1) => {
                        s.in_flight += 1;
                        return Permit { throttle: self };
                    }
                    _ => None,
                }
            };
            match pause {
                Some(wait) => tokio::time::sleep(wait + jitter(wait)).await,
                None => freed.await,
            }
        }
    }

    pub fn learn(&self, signal: Signal) {
        self.state
            .lock()
            .expect("throttle lock")
            .learn(signal, Instant::now());
    }

    /// Requests allowed in flight now (for metrics and tests).
    pub fn limit(&self) -> usize {
        self.state.lock().expect("throttle lock").allowed()
    }

    /// Whether `remaining` (from `x-ms-ratelimit-remaining-*`) is too little for the requests that may be
    /// in flight: the next round could spend it.
    pub fn near(&self, remaining: u64) -> bool {
        remaining <= self.limit() as u64
    }
}

/// Up to a quarter of the wait (at least 50 ms), so that paused requests return spread out.
fn jitter(wait: Duration) -> Duration {
    let span = (wait / 4).max(Duration::from_millis(50));
    span.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn successes_grow_the_limit_and_throttles_halve_it_once_per_window() {
        let mut s = Throttle::default().state.into_inner().unwrap();
        let now = Instant::now();
        for _ in 0..200 {
            s.learn(Signal::Ok, now);
        }
        assert!(s.allowed() > 16 && s.allowed() <= 64, "{}", s.allowed());
        let before = s.limit;
        // Three 429s from the same burst: one halving.
        for _ in 0..3 {
            s.learn(Signal::Throttled(Duration::from_secs(2)), now);
        }
        assert_eq!(s.limit, before / 2.0);
        assert_eq!(s.paused_until, Some(now + Duration::from_secs(2)));
        // Successes right after a throttle do not grow it; after a calm spell they do.
        s.learn(Signal::Ok, now + Duration::from_secs(1));
        assert_eq!(s.limit, before / 2.0);
        s.learn(Signal::Ok, now + CALM);
        assert!(s.limit > before / 2.0);
        // A later throttle halves again, down to one request in flight at least.
        for i in 1..20 {
            s.learn(
                Signal::Throttled(Duration::from_secs(1)),
                now + DECREASE_WINDOW * i,
            );
        }
        assert_eq!(s.allowed(), 1);
        // A shorter Retry-After never shortens a pause already set.
        assert!(s.paused_until.unwrap() >= now + Duration::from_secs(2));
        // A Retry-After of minutes pauses for MAX_PAUSE at most.
        let t = now + Duration::from_secs(30);
        s.learn(Signal::Throttled(Duration::from_secs(600)), t);
        assert_eq!(s.paused_until, Some(t + MAX_PAUSE));
        // Nearly spent: a pause, and the limit stays.
        let later = now + Duration::from_secs(60);
        s.learn(Signal::NearLimit, later);
        assert_eq!(s.allowed(), 1);
        assert_eq!(s.paused_until, Some(later + NEAR_LIMIT_PAUSE));
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_pauses_every_request_until_retry_after() {
        let throttle = Arc::new(Throttle::default());
        throttle.learn(Signal::Throttled(Duration::from_secs(3)));
        let start = tokio::time::Instant::now();
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let t = throttle.clone();
                tokio::spawn(async move {
                    let _p = t.acquire().await;
                    tokio::time::Instant::now()
                })
            })
            .collect();
        for w in waiters {
            let got = w.await.unwrap() - start;
            assert!(got >= Duration::from_secs(3), "{got:?}");
            assert!(got <= Duration::from_millis(3800), "{got:?}");
        }
    }

    #[tokio::test]
    async fn no_more_requests_in_flight_than_the_limit() {
        let throttle = Arc::new(Throttle::default());
        // Shrink to 2 in flight.
        let now = Instant::now();
        {
            let mut s = throttle.state.lock().unwrap();
            s.limit = 2.0;
            s.last_decrease = Some(now);
        }
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let current = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (t, peak, current) = (throttle.clone(), peak.clone(), current.clone());
                tokio::spawn(async move {
                    let _p = t.acquire().await;
                    let n = current.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    peak.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    current.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
