//! The feeds that tell `Drift` what changed in Azure. Every interval: one delta round over applications and
//! one over service principals (a single page when nothing changed), and one role assignment listing per
//! subscription that verified delegations use. A subscription seen for the first time is listed within
//! seconds, so that new delegations are vouched for soon.
//!
//! The cost is a handful of reads per interval whatever the number of objects, instead of a few reads per
//! object per resync.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use tokio::time::Instant;
use tracing::{debug, warn};

use super::{Drift, Source};
use crate::azure::{
    arm::ArmClient,
    error::AzureError,
    graph::{DeltaNext, GraphClient},
    scope::Scope,
};

const SETS: [&str; 2] = ["applications", "servicePrincipals"];
/// How often to look for subscriptions not listed yet.
const NEW_SUBSCRIPTION_CHECK: Duration = Duration::from_secs(5);

pub struct Feeds {
    drift: Arc<Drift>,
    graph: GraphClient,
    arm: ArmClient,
    /// Per delta set, the link that starts its next round.
    delta_links: HashMap<&'static str, String>,
    /// The subscriptions listed so far.
    listed: HashSet<String>,
    last_round: Option<Instant>,
}

impl Feeds {
    pub fn new(drift: Arc<Drift>, graph: GraphClient, arm: ArmClient) -> Self {
        Feeds {
            drift,
            graph,
            arm,
            delta_links: HashMap::new(),
            listed: HashSet::new(),
            last_round: None,
        }
    }

    /// The first delta round, before the controllers start: their first reconciles then count as
    /// verifications, instead of each object being read again at its next resync.
    pub async fn prime(&mut self) {
        self.last_round = Some(Instant::now());
        self.graph_round().await;
    }

    /// Runs rounds forever: Graph and known subscriptions every interval, new subscriptions within seconds.
    pub async fn run(mut self) {
        // At least a millisecond: `interval` panics on zero, and DRIFT_INTERVAL=0s is a value a flag can take.
        let period = NEW_SUBSCRIPTION_CHECK
            .min(self.drift.interval())
            .max(std::time::Duration::from_millis(1));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let due = self
                .last_round
                .is_none_or(|t| t.elapsed() >= self.drift.interval());
            if due {
                self.last_round = Some(Instant::now());
                self.graph_round().await;
            }
            for sub in self.drift.subscriptions() {
                if due || !self.listed.contains(&sub) {
                    self.arm_round(&sub).await;
                }
            }
        }
    }

    /// One delta round over both sets. The first round (or one after an expired token) reads everything and
    /// reports nothing: it only starts continuity.
    async fn graph_round(&mut self) {
        let started = Instant::now();
        let mut changed = vec![];
        let mut continuous = true;
        for set in SETS {
            let link = self.delta_links.get(set).cloned();
            continuous &= link.is_some();
            match delta_round(&self.graph, set, link.as_deref()).await {
                Ok((ids, next)) => {
                    if link.is_some() {
                        changed.extend(ids);
                    }
                    self.delta_links.insert(set, next);
                }
                Err(e) => {
                    if matches!(e.code(), "syncStateNotFound" | "resyncRequired")
                        || matches!(e, AzureError::Api { status: 410, .. })
                    {
                        // The token expired: start over; verifications until then no longer count.
                        self.delta_links.remove(set);
                    }
                    warn!(set, error = %e, "drift feed: delta query failed; objects are read at resync until it recovers");
                    return;
                }
            }
        }
        debug!(
            changed = changed.len(),
            continuous, "drift feed: delta round"
        );
        self.drift.saw(changed);
        self.drift
            .round_done(Source::Graph, "", started, continuous);
    }

    /// One listing of a subscription's role assignments, compared with what is verified there: an
    /// assignment gone, or granting something else, is a change; one as verified is confirmed as of the
    /// listing. Others are not the operator's business.
    async fn arm_round(&mut self, sub: &str) {
        let started = Instant::now();
        let listed = match Scope::subscription_scope(sub) {
            Ok(scope) => self.arm.role_assignments_in(&scope).await,
            Err(e) => {
                warn!(subscription = sub, error = %e, "drift feed: not a subscription; nothing listed");
                return;
            }
        };
        let listed = match listed {
            Ok(listed) => listed,
            Err(e) => {
                warn!(subscription = sub, error = %e, "drift feed: cannot list role assignments; delegations there are read at resync");
                return;
            }
        };
        let listed: HashMap<String, u64> = listed
            .iter()
            .map(|a| {
                let p = &a.properties;
                let grant = super::grant_hash(
                    &p.role_definition_id,
                    &p.principal_id,
                    p.condition.as_deref(),
                    p.description.as_deref(),
                );
                (a.id.to_ascii_lowercase(), grant)
            })
            .collect();
        let changed = self.drift.confirm(sub, &listed, started);
        self.drift.saw(changed);
        let continuous = !self.listed.insert(sub.to_string());
        self.drift.round_done(Source::Arm, sub, started, continuous);
    }
}

/// Pages through one delta round; the ids it reported, and the link for the next round.
async fn delta_round(
    graph: &GraphClient,
    set: &str,
    mut link: Option<&str>,
) -> Result<(Vec<String>, String), AzureError> {
    let mut ids = vec![];
    let mut owned;
    loop {
        let page = graph.delta(set, link).await?;
        ids.extend(page.ids);
        match page.next {
            DeltaNext::Page(next) => {
                owned = next;
                link = Some(&owned);
            }
            DeltaNext::Round(delta) => return Ok((ids, delta)),
        }
    }
}
