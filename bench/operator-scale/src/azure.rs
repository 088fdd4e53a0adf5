//! The emulator's side: its call counts by operation, and the least time its throttling allows for a given
//! set of writes, from the limiter's own buckets (`azure_emulator::limits::Limit`) and their levels.

use std::collections::BTreeMap;

use azure_emulator::limits::Limit;
use serde_json::{Value, json};

/// Resource units a Graph write costs in the emulator (graph/query.rs: every method but GET costs 1).
pub const GRAPH_WRITE_RU: f64 = 1.0;

/// The emulator's calls over a phase, by "service METHOD route status" (status 2xx, or the code).
pub struct Calls(BTreeMap<String, u64>);

struct Call<'a> {
    service: &'a str,
    method: &'a str,
    route: &'a str,
    status: &'a str,
}

impl Calls {
    /// The calls since the last take; resets them.
    pub fn take(emulator: &azure_emulator::Running) -> Calls {
        let mut calls = emulator.ctx.calls.lock();
        let mut taken = BTreeMap::new();
        for (op, by_status) in calls.iter() {
            for (status, n) in by_status {
                let class = match status {
                    200..=299 => "2xx".to_string(),
                    s => s.to_string(),
                };
                *taken.entry(format!("{op} {class}")).or_insert(0) += n;
            }
        }
        calls.clear();
        Calls(taken)
    }

    fn each(&self) -> impl Iterator<Item = (Call<'_>, u64)> {
        self.0.iter().filter_map(|(op, n)| {
            let (service, rest) = op.split_once(' ')?;
            let (method, rest) = rest.split_once(' ')?;
            let (route, status) = rest.rsplit_once(' ')?;
            Some((
                Call {
                    service,
                    method,
                    route,
                    status,
                },
                *n,
            ))
        })
    }

    fn sum(&self, f: impl Fn(&Call) -> bool) -> u64 {
        self.each().filter(|(c, _)| f(c)).map(|(_, n)| n).sum()
    }

    /// Graph and ARM reads (GET, HEAD), whatever the answer.
    pub fn reads(&self) -> u64 {
        self.sum(|c| azure(c) && read(c))
    }

    /// Reads that were answered (not throttled).
    pub fn accepted_reads(&self) -> u64 {
        self.sum(|c| azure(c) && read(c) && c.status != "429")
    }

    /// Graph and ARM writes (any other method) that succeeded.
    pub fn accepted_writes(&self) -> u64 {
        self.sum(|c| azure(c) && !read(c) && c.status == "2xx")
    }

    pub fn throttled(&self) -> Value {
        let reads = self.sum(|c| azure(c) && read(c) && c.status == "429");
        let writes = self.sum(|c| azure(c) && !read(c) && c.status == "429");
        json!({"total": reads + writes, "reads": reads, "writes": writes})
    }

    pub fn throttled_total(&self) -> u64 {
        self.sum(|c| c.status == "429")
    }

    pub fn total(&self) -> u64 {
        self.sum(azure)
    }

    /// Token requests (client credentials, the rotation's sign-in checks).
    pub fn tokens(&self) -> u64 {
        self.sum(|c| c.service == "token")
    }

    /// Successful writes by what they do, for comparison with the minimum.
    pub fn writes_by_kind(&self, per: f64) -> Value {
        let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
        for (c, n) in self.each() {
            if azure(&c) && !read(&c) && c.status == "2xx" {
                *kinds.entry(write_kind(&c)).or_default() += n;
            }
        }
        kinds
            .into_iter()
            .map(|(k, n)| (k.to_string(), json!(round2(n as f64 / per))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    /// Every operation's count divided by `per` (objects, or objects times hours).
    pub fn per(&self, per: f64) -> Value {
        self.0
            .iter()
            .map(|(op, n)| (op.clone(), json!(round2(*n as f64 / per))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

fn azure(c: &Call) -> bool {
    c.service == "graph" || c.service == "arm"
}

fn read(c: &Call) -> bool {
    c.method == "GET" || c.method == "HEAD"
}

fn write_kind(c: &Call) -> &'static str {
    match (c.service, c.method) {
        ("graph", "PATCH") if c.route.starts_with("/applications(uniqueName") => "app upsert",
        ("graph", "PATCH") if c.route.starts_with("/servicePrincipals(appId") => "SP upsert",
        ("graph", "POST") if c.route.ends_with("/addPassword") => "addPassword",
        ("graph", "POST") if c.route.ends_with("/removePassword") => "removePassword",
        ("arm", "PUT") if c.route.contains("/roleAssignments/") => "role assignment PUT",
        ("graph", "DELETE") | ("arm", "DELETE") => "delete",
        _ => "other",
    }
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Whose buckets the operator draws on: Graph's are per calling app, ARM's per principal (object id).
pub struct Caller {
    pub graph_app: String,
    pub arm_principal: String,
}

pub fn limit_name(limit: Limit) -> &'static str {
    match limit {
        Limit::GraphResourceUnits => "Graph resource units",
        Limit::GraphWrites => "Graph writes",
        Limit::ArmReads => "ARM reads",
        Limit::ArmWrites => "ARM writes",
        Limit::ArmDeletes => "ARM deletes",
    }
}

/// Every limit's bucket (capacity, refill per second) under `knobs`, as the limiter applies it.
pub fn limits(knobs: &azure_emulator::config::Knobs) -> Value {
    let limits = [
        Limit::GraphWrites,
        Limit::GraphResourceUnits,
        Limit::ArmReads,
        Limit::ArmWrites,
        Limit::ArmDeletes,
    ];
    json!({
        "enabled": knobs.throttling.enabled,
        "scale": knobs.throttling.scale,
        "tenantSize": knobs.throttling.tenant_size,
        "buckets": limits
            .into_iter()
            .filter_map(|l| {
                let (capacity, per_second) = l.bucket(knobs)?;
                Some(json!({"limit": limit_name(l), "capacity": capacity, "refillPerSecond": per_second}))
            })
            .collect::<Vec<_>>(),
    })
}

/// A bucket as the limiter has it now.
#[derive(Clone, Copy)]
pub struct Bucket {
    pub limit: Limit,
    pub level: f64,
    pub capacity: f64,
    pub per_second: f64,
}

impl Bucket {
    /// None when the emulator does not throttle.
    pub fn now(emulator: &azure_emulator::Running, limit: Limit, who: &Caller) -> Option<Bucket> {
        let caller = match limit {
            Limit::GraphResourceUnits | Limit::GraphWrites => &who.graph_app,
            _ => &who.arm_principal,
        };
        let knobs = emulator.ctx.knobs.read();
        let (capacity, per_second) = limit.bucket(&knobs)?;
        let level = emulator.ctx.limiter.lock().level(&knobs, limit, caller)?;
        Some(Bucket {
            limit,
            level,
            capacity,
            per_second,
        })
    }

    /// The same bucket, full.
    pub fn full(self) -> Bucket {
        Bucket {
            level: self.capacity,
            ..self
        }
    }

    /// The least time to take `needed` tokens: what the bucket holds is free, the rest comes at its refill.
    pub fn term(&self, needed: f64) -> Term {
        let seconds = ((needed - self.level) / self.per_second).max(0.0);
        Term {
            name: limit_name(self.limit).to_string(),
            seconds,
            detail: json!({
                "limit": limit_name(self.limit),
                "needed": needed,
                "bucketAtStart": self.level.floor(),
                "capacity": self.capacity,
                "refillPerSecond": self.per_second,
                "seconds": seconds,
                "formula": format!(
                    "max(0, ({needed:.0} - {:.0}) / {}/s) = {seconds:.1} s",
                    self.level.floor(),
                    self.per_second
                ),
            }),
        }
    }
}

/// One lower bound on a phase's duration.
pub struct Term {
    pub name: String,
    pub seconds: f64,
    pub detail: Value,
}

/// The largest of the lower bounds: the throttle-limited minimum, with the limit that sets it.
pub fn minimum(terms: Vec<Term>) -> (f64, Value) {
    let binding = terms
        .iter()
        .max_by(|a, b| a.seconds.total_cmp(&b.seconds))
        .filter(|t| t.seconds > 0.0)
        .map(|t| t.name.clone());
    let seconds = terms.iter().map(|t| t.seconds).fold(0.0, f64::max);
    (
        seconds,
        json!({
            "seconds": seconds,
            "binding": binding,
            "terms": terms.into_iter().map(|t| t.detail).collect::<Vec<_>>(),
        }),
    )
}
