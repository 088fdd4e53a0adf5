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
        if !knobs.throttling.enabled {
            return Verdict::Allowed {
                used: 0.0,
                remaining: u64::MAX,
            };
        }
        let scale = knobs.throttling.scale.max(1e-6);
        let ru_limit = match knobs.throttling.tenant_size.as_str() {
            "L" => 8000.0,
            "M" => 5000.0,
            _ => 3500.0,
        } * scale;
        let ru = self.take(
            format!("graph-ru/{caller}"),
            ru_limit,
            ru_limit / 10.0,
            cost as f64,
        );
        let write_limit = 3000.0 * scale;
        let writes = if write {
            Some(self.take(
                format!("graph-write/{caller}"),
                write_limit,
                write_limit / 150.0,
                1.0,
            ))
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
        if !knobs.throttling.enabled {
            return Verdict::Allowed {
                used: 0.0,
                remaining: 11999,
            };
        }
        let scale = knobs.throttling.scale.max(1e-6);
        let (capacity, refill) = if kind == "reads" {
            (250.0, 25.0)
        } else {
            (200.0, 10.0)
        };
        match self.take(
            format!("arm-{kind}/{principal}"),
            capacity * scale,
            refill * scale,
            1.0,
        ) {
            Ok(left) => Verdict::Allowed {
                used: 1.0 - left / (capacity * scale),
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
