//! Throttling at Azure's documented limits (scaled by a knob) and injected faults.
//!
//! Graph (per calling app and tenant): resource units per 10 s by tenant size, and 3,000 writes per
//! 2 min 30 s. ARM (per principal): token buckets of 250 reads refilling 25/s, 200 writes and 200 deletes
//! refilling 10/s. Token buckets approximate the sliding windows closely enough for clients to see the
//! documented headers and Retry-After values.

use std::{collections::HashMap, time::Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::config::{FaultRule, Knobs};

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes `cost` if available; otherwise says how long until it would be.
    fn take(
        &mut self,
        capacity: f64,
        per_second: f64,
        cost: f64,
        now: Instant,
    ) -> Result<f64, f64> {
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * per_second).min(capacity);
        self.at = now;
        if self.tokens >= cost {
            self.tokens -= cost;
            Ok(self.tokens)
        } else {
            Err((cost - self.tokens) / per_second)
        }
    }
}

/// One of the limits the emulator enforces, each a token bucket per caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Graph resource units per 10 s, per calling app (by tenant size).
    GraphResourceUnits,
    /// Graph writes (any method but GET) per 150 s, per calling app.
    GraphWrites,
    /// ARM reads (GET, HEAD), per principal.
    ArmReads,
    /// ARM writes (PUT, PATCH, POST), per principal.
    ArmWrites,
    /// ARM deletes, per principal.
    ArmDeletes,
}

impl Limit {
    /// The bucket's capacity and refill per second under `knobs`, or None when throttling is off.
    pub fn bucket(self, knobs: &Knobs) -> Option<(f64, f64)> {
        if !knobs.throttling.enabled {
            return None;
        }
        let scale = knobs.throttling.scale.max(1e-6);
        let (capacity, window_seconds) = match self {
            Limit::GraphResourceUnits => (
                match knobs.throttling.tenant_size.as_str() {
                    "L" => 8000.0,
                    "M" => 5000.0,
                    _ => 3500.0,
                },
                10.0,
            ),
            Limit::GraphWrites => (3000.0, 150.0),
            Limit::ArmReads => (250.0, 10.0),
            Limit::ArmWrites | Limit::ArmDeletes => (200.0, 20.0),
        };
        Some((capacity * scale, capacity * scale / window_seconds))
    }

    fn key(self, caller: &str) -> String {
        let kind = match self {
            Limit::GraphResourceUnits => "graph-ru",
            Limit::GraphWrites => "graph-write",
            Limit::ArmReads => "arm-reads",
            Limit::ArmWrites => "arm-writes",
            Limit::ArmDeletes => "arm-deletes",
        };
        format!("{kind}/{caller}")
    }
}

/// The outcome of a throttling check.
pub enum Verdict {
    /// Allowed; `used` is the fraction of the tightest limit in use, `remaining` what is left of it.
    Allowed { used: f64, remaining: u64 },
    /// Throttled: retry after this many seconds; `which` names the exceeded limit.
    Throttled {
        retry_after: u64,
        which: &'static str,
    },
}

#[derive(Default)]
pub struct Limiter {
    buckets: HashMap<String, Bucket>,
}

impl Limiter {
    /// Tokens left now in `caller`'s bucket for `limit` (Graph: the app id; ARM: the principal's object id),
    /// refill included; a caller not seen yet has a full bucket. None when throttling is off.
    pub fn level(&self, knobs: &Knobs, limit: Limit, caller: &str) -> Option<f64> {
        let (capacity, per_second) = limit.bucket(knobs)?;
        Some(match self.buckets.get(&limit.key(caller)) {
            Some(b) => (b.tokens + b.at.elapsed().as_secs_f64() * per_second).min(capacity),
            None => capacity,
        })
    }

    fn take(&mut self, key: String, capacity: f64, per_second: f64, cost: f64) -> Result<f64, f64> {
        let now = Instant::now();
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        bucket.take(capacity, per_second, cost, now)
    }

    /// Graph: every request costs resource units; writes also count against the write limit.
    pub fn graph(&mut self, knobs: &Knobs, caller: &str, cost: u32, write: bool) -> Verdict {
        let (Some((ru_limit, ru_rate)), Some((write_limit, write_rate))) = (
            Limit::GraphResourceUnits.bucket(knobs),
            Limit::GraphWrites.bucket(knobs),
        ) else {
            return Verdict::Allowed {
                used: 0.0,
                remaining: u64::MAX,
            };
        };
        let ru = self.take(
            Limit::GraphResourceUnits.key(caller),
            ru_limit,
            ru_rate,
            cost as f64,
        );
        let writes = if write {
            Some(self.take(Limit::GraphWrites.key(caller), write_limit, write_rate, 1.0))
        } else {
            None
        };
        match (ru, writes) {
            (_, Some(Err(wait))) => Verdict::Throttled {
                retry_after: wait.ceil().max(1.0) as u64,
                which: "WriteLimitExceeded",
            },
            (Err(wait), _) => Verdict::Throttled {
                retry_after: wait.ceil().max(1.0) as u64,
                which: "ResourceUnitLimitExceeded",
            },
            (Ok(ru_left), writes) => {
                let mut used = 1.0 - ru_left / ru_limit;
                if let Some(Ok(w_left)) = writes {
                    used = used.max(1.0 - w_left / write_limit);
                }
                Verdict::Allowed {
                    used,
                    remaining: ru_left as u64,
                }
            }
        }
    }

    /// ARM: `kind` is reads, writes or deletes.
    pub fn arm(&mut self, knobs: &Knobs, principal: &str, kind: &'static str) -> Verdict {
        let limit = match kind {
            "reads" => Limit::ArmReads,
            "deletes" => Limit::ArmDeletes,
            _ => Limit::ArmWrites,
        };
        let Some((capacity, refill)) = limit.bucket(knobs) else {
            return Verdict::Allowed {
                used: 0.0,
                remaining: 11999,
            };
        };
        match self.take(limit.key(principal), capacity, refill, 1.0) {
            Ok(left) => Verdict::Allowed {
                used: 1.0 - left / capacity,
                remaining: left as u64,
            },
            Err(wait) => Verdict::Throttled {
                retry_after: wait.ceil().max(1.0) as u64,
                which: kind,
            },
        }
    }
}

/// What an injected fault does to a request.
#[derive(Debug, Default, PartialEq)]
pub struct Injected {
    pub latency_ms: u64,
    pub status: Option<u16>,
    pub timeout_ms: Option<u64>,
}

pub struct Faults {
    rng: StdRng,
}

impl Faults {
    pub fn new(seed: u64) -> Self {
        Faults {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Applies every matching rule that fires (by its rate): latencies add up, the first status or
    /// timeout wins.
    pub fn pick(&mut self, rules: &[FaultRule], method: &str, path: &str) -> Injected {
        let mut out = Injected::default();
        let path = path.to_ascii_lowercase();
        for rule in rules {
            let method_ok = rule.method.is_empty() || rule.method.eq_ignore_ascii_case(method);
            let path_ok = rule.path_contains.is_empty()
                || path.contains(&rule.path_contains.to_ascii_lowercase());
            if !(method_ok && path_ok && self.rng.random_bool(rule.rate.clamp(0.0, 1.0))) {
                continue;
            }
            out.latency_ms += rule.latency_ms;
            if out.status.is_none() && out.timeout_ms.is_none() {
                if rule.timeout_ms > 0 {
                    out.timeout_ms = Some(rule.timeout_ms);
                } else if rule.status != 0 {
                    out.status = Some(rule.status);
                }
            }
        }
        out
    }

    pub fn chance(&mut self, rate: f64) -> bool {
        self.rng.random_bool(rate.clamp(0.0, 1.0))
    }

    /// The token-endpoint region that serves a request, of `regions` (at least one); see `replication`.
    pub fn region(&mut self, regions: u32) -> u32 {
        self.rng.random_range(0..regions.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Throttling;

    #[test]
    fn graph_write_limit_throttles_at_the_scaled_limit() {
        let knobs = Knobs {
            throttling: Throttling {
                enabled: true,
                scale: 0.01,
                tenant_size: "S".into(),
            },
            ..Default::default()
        };
        let mut limiter = Limiter::default();
        // 3000 * 0.01 = 30 writes per window.
        let allowed = (0..40)
            .filter(|_| {
                matches!(
                    limiter.graph(&knobs, "app", 1, true),
                    Verdict::Allowed { .. }
                )
            })
            .count();
        assert_eq!(allowed, 30);
        match limiter.graph(&knobs, "app", 1, true) {
            Verdict::Throttled { retry_after, which } => {
                assert_eq!(which, "WriteLimitExceeded");
                assert!((1..=6).contains(&retry_after), "{retry_after}");
            }
            Verdict::Allowed { .. } => panic!("should be throttled"),
        }
        // Another app has its own budget.
        assert!(matches!(
            limiter.graph(&knobs, "other", 1, true),
            Verdict::Allowed { .. }
        ));
    }

    #[test]
    fn buckets_are_the_documented_limits_and_their_level_is_readable() {
        let knobs = Knobs::default();
        assert_eq!(Limit::GraphWrites.bucket(&knobs), Some((3000.0, 20.0)));
        assert_eq!(
            Limit::GraphResourceUnits.bucket(&knobs),
            Some((3500.0, 350.0))
        );
        assert_eq!(Limit::ArmReads.bucket(&knobs), Some((250.0, 25.0)));
        assert_eq!(Limit::ArmWrites.bucket(&knobs), Some((200.0, 10.0)));
        assert_eq!(Limit::ArmDeletes.bucket(&knobs), Some((200.0, 10.0)));
        let mut limiter = Limiter::default();
        assert_eq!(limiter.level(&knobs, Limit::ArmWrites, "p"), Some(200.0));
        for _ in 0..50 {
            limiter.arm(&knobs, "p", "writes");
        }
        let level = limiter.level(&knobs, Limit::ArmWrites, "p").unwrap();
        assert!((150.0..151.0).contains(&level), "{level}");
        assert_eq!(limiter.level(&knobs, Limit::ArmReads, "p"), Some(250.0));
    }

    #[test]
    fn faults_fire_at_their_rate_and_match_path_and_method() {
        let rules = vec![FaultRule {
            method: "POST".into(),
            path_contains: "/addPassword".into(),
            rate: 0.5,
            status: 503,
            ..Default::default()
        }];
        let mut faults = Faults::new(7);
        let hits = (0..1000)
            .filter(|_| {
                faults
                    .pick(&rules, "POST", "/v1.0/applications/x/addPassword")
                    .status
                    == Some(503)
            })
            .count();
        assert!((400..600).contains(&hits), "{hits}");
        assert_eq!(
            faults.pick(&rules, "GET", "/v1.0/applications/x/addPassword"),
            Injected::default()
        );
    }
}
