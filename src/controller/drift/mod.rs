//! Drift found in bulk instead of one GET per object per resync.
//!
//! A full reconcile that confirmed an object in Azure records it here as verified (its Azure ids, the time
//! its reads started, and the Kubernetes object that owns it). Feeds (`feeds.rs`) learn what changed in
//! Azure for everything at once: Graph delta queries for applications and service principals, one listing
//! per subscription for role assignments. A change to a verified id forgets the verification and brings its
//! owner back for a full reconcile; otherwise a later reconcile may trust the verification and skip its
//! Azure reads.
//!
//! The fallback is the full reconcile: a verification counts only while its feed has run without a gap
//! since before it (a feed that restarts its delta round, or has not succeeded for two intervals, vouches for
//! nothing), so drift is never missed, only found at the cost of reads.

pub mod feeds;

use std::{collections::HashMap, sync::Mutex, time::Duration};

use kube::runtime::reflector::ObjectRef;
use tokio::{sync::broadcast, time::Instant};

use crate::{
    api::{RoleDelegation, ServicePrincipal},
    azure::scope::{RoleAssignmentId, RoleDefinitionId},
};

/// Where a change to an id is learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// Graph delta queries (applications and service principals, by object id).
    Graph,
    /// Role assignment listings, per subscription (by assignment id).
    Arm,
}

/// The Kubernetes object a verified id belongs to.
#[derive(Clone, Debug, PartialEq)]
pub enum Owner {
    ServicePrincipal(ObjectRef<ServicePrincipal>),
    RoleDelegation(ObjectRef<RoleDelegation>),
}

/// How a feed has run: since when without a gap, and when it last succeeded.
#[derive(Clone, Copy, Debug, Default)]
struct Continuity {
    since: Option<Instant>,
    last_ok: Option<Instant>,
}

/// What a full reconcile confirmed about one id.
#[derive(Clone, Debug)]
struct Verified {
    /// When the reads that confirmed it started.
    at: Instant,
    owner: Owner,
    /// For a role assignment: what it grants (`grant_hash`), which a listing can confirm again.
    grant: Option<u64>,
}

#[derive(Debug, Default)]
struct State {
    /// Graph's one feed; ARM's per subscription (lowercase id), since each is listed on its own.
    feeds: HashMap<(Source, String), Continuity>,
    verified: HashMap<String, Verified>,
    /// When a feed last saw an id change: a verification whose reads started before that is stale, even
    /// if it was recorded after.
    changed: HashMap<String, Instant>,
}

pub struct Drift {
    interval: Duration,
    state: Mutex<State>,
    triggers: broadcast::Sender<Owner>,
}

/// How long a change is remembered: longer than any reconcile's reads take.
const CHANGE_MEMORY: Duration = Duration::from_secs(600);

impl Drift {
    pub fn new(interval: Duration) -> Self {
        Drift {
            interval,
            state: Mutex::default(),
            triggers: broadcast::channel(4096).0,
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The feed an id belongs to: Graph's one, or the subscription's listing.
    fn feed_of(source: Source, id: &str) -> (Source, String) {
        match source {
            Source::Graph => (Source::Graph, String::new()),
            Source::Arm => (Source::Arm, subscription_of(id).unwrap_or_default()),
        }
    }

    /// Whether every id was verified after its feed started running without a gap, that feed is current, and
    /// no change to it has been seen since: then Azure need not be read for them.
    pub fn fresh(&self, source: Source, ids: &[&str]) -> bool {
        let now = Instant::now();
        let state = self.state.lock().expect("drift lock");
        !ids.is_empty()
            && ids.iter().all(|id| {
                let id = id.to_ascii_lowercase();
                let feed = state
                    .feeds
                    .get(&Self::feed_of(source, &id))
                    .copied()
                    .unwrap_or_default();
                let current = feed.last_ok.is_some_and(|ok| {
                    now.duration_since(ok) <= self.interval * 2 + Duration::from_secs(30)
                });
                let Some(v) = state.verified.get(&id) else {
                    return false;
                };
                current
                    && feed.since.is_some_and(|since| since <= v.at)
                    && state.changed.get(&id).is_none_or(|seen| *seen < v.at)
            })
    }

    /// Records that a full reconcile whose Azure reads started at `started` confirmed these ids.
    pub fn verified(&self, ids: &[&str], started: Instant, owner: Owner) {
        let mut state = self.state.lock().expect("drift lock");
        for id in ids {
            state.verified.insert(
                id.to_ascii_lowercase(),
                Verified {
                    at: started,
                    owner: owner.clone(),
                    grant: None,
                },
            );
        }
    }

    /// Records that a full reconcile whose reads started at `started` confirmed a role assignment granting
    /// `grant` (see `grant_hash`).
    pub fn verified_grant(&self, id: &str, grant: u64, started: Instant, owner: Owner) {
        self.state.lock().expect("drift lock").verified.insert(
            id.to_ascii_lowercase(),
            Verified {
                at: started,
                owner,
                grant: Some(grant),
            },
        );
    }

    /// Forgets ids (their object is gone, or no longer holds them).
    pub fn forget(&self, ids: &[&str]) {
        let mut state = self.state.lock().expect("drift lock");
        for id in ids {
            state.verified.remove(&id.to_ascii_lowercase());
        }
    }

    /// The subscriptions whose role assignments verified objects hold: what the ARM feed lists.
    pub fn subscriptions(&self) -> Vec<String> {
        let state = self.state.lock().expect("drift lock");
        let mut subs: Vec<String> = state
            .verified
            .keys()
            .filter_map(|id| subscription_of(id))
            .collect();
        subs.sort();
        subs.dedup();
        subs
    }

    /// Compares a subscription's listing (assignment id → `grant_hash`), which started at `at`, with what is
    /// verified there before then. An assignment missing, or granting something else, has changed (and is
    /// returned); one that grants what was verified is confirmed as of the listing, even if it was verified
    /// after the previous listing and so never seen by one.
    pub fn confirm(
        &self,
        subscription: &str,
        listed: &HashMap<String, u64>,
        at: Instant,
    ) -> Vec<String> {
        let mut state = self.state.lock().expect("drift lock");
        let mut changed = vec![];
        for (id, v) in state.verified.iter_mut() {
            if v.at >= at || subscription_of(id).as_deref() != Some(subscription) {
                continue;
            }
            match (listed.get(id), v.grant) {
                (None, _) => changed.push(id.clone()),
                (Some(now), Some(was)) if *now != was => changed.push(id.clone()),
                (Some(_), Some(_)) => v.at = at,
                (Some(_), None) => {}
            }
        }
        changed
    }

    /// A feed round started at `at` and ended well. `continuous` is false when it could not carry on from
    /// the previous round (a new delta round, a subscription listed for the first time): only what is
    /// verified from `at` on is vouched for.
    pub fn round_done(&self, source: Source, feed: &str, at: Instant, continuous: bool) {
        let mut state = self.state.lock().expect("drift lock");
        let c = state.feeds.entry((source, feed.to_string())).or_default();
        if !continuous || c.since.is_none() {
            c.since = Some(at);
        }
        c.last_ok = Some(Instant::now());
    }

    /// A feed saw these ids change: their verifications go, and their owners are reconciled.
    pub fn saw(&self, ids: impl IntoIterator<Item = String>) {
        let now = Instant::now();
        let owners: Vec<Owner> = {
            let mut state = self.state.lock().expect("drift lock");
            state
                .changed
                .retain(|_, seen| now.duration_since(*seen) < CHANGE_MEMORY);
            ids.into_iter()
                .filter_map(|id| {
                    let id = id.to_ascii_lowercase();
                    state.changed.insert(id.clone(), now);
                    state.verified.remove(&id).map(|v| v.owner)
                })
                .collect()
        };
        for owner in owners {
            // No receiver (before the controllers run) or a lagging one: the object is no longer verified,
            // so its next resync reads Azure anyway.
            let _ = self.triggers.send(owner);
        }
    }

    /// The objects to reconcile because their Azure state changed.
    pub fn triggers(&self) -> broadcast::Receiver<Owner> {
        self.triggers.subscribe()
    }
}

/// What a role assignment grants, hashed the same way whether it comes from a listing, a GET or the PUT
/// that made it: role GUID and principal (lowercase), condition and description.
pub fn grant_hash(
    role_definition_id: &str,
    principal_id: &str,
    condition: Option<&str>,
    description: Option<&str>,
) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        RoleDefinitionId::guid_of(role_definition_id),
        principal_id.to_ascii_lowercase(),
        condition,
        description,
    )
        .hash(&mut h);
    h.finish()
}

/// The subscription (lower case) of a role assignment id; None for other ids (Graph's) and for assignments
/// outside any subscription (management groups), which no subscription listing covers.
fn subscription_of(id: &str) -> Option<String> {
    RoleAssignmentId::parse(id)
        .ok()?
        .scope()
        .subscription()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner {
        Owner::ServicePrincipal(ObjectRef::new("a").within("n"))
    }

    // Subscription ids are GUIDs: the typed id parser refuses anything else.
    const S1: &str = "00000000-0000-4000-8000-0000000000a1";
    const S2: &str = "00000000-0000-4000-8000-0000000000a2";
    const ASSIGNMENT: &str = "/subscriptions/00000000-0000-4000-8000-0000000000A1/resourceGroups/rg/providers/Microsoft.Authorization/roleAssignments/x";

    #[tokio::test(start_paused = true)]
    async fn a_verification_counts_only_after_its_feed_started_and_until_a_change() {
        let drift = Drift::new(Duration::from_secs(60));
        let t0 = Instant::now();
        // Verified, but no feed has run: read Azure.
        drift.verified(&["app", "sp"], t0, owner());
        assert!(!drift.fresh(Source::Graph, &["app", "sp"]));
        // A feed that started after the verification does not vouch for it.
        tokio::time::advance(Duration::from_secs(1)).await;
        drift.round_done(Source::Graph, "", Instant::now(), false);
        assert!(!drift.fresh(Source::Graph, &["app", "sp"]));
        // Verified again after the feed started: fresh, and stays so through continuous rounds.
        tokio::time::advance(Duration::from_secs(1)).await;
        drift.verified(&["App", "SP"], Instant::now(), owner());
        assert!(drift.fresh(Source::Graph, &["app", "sp"]));
        tokio::time::advance(Duration::from_secs(60)).await;
        drift.round_done(Source::Graph, "", Instant::now(), true);
        assert!(drift.fresh(Source::Graph, &["app", "sp"]));
        // One id not verified, or no ids at all: not fresh.
        assert!(!drift.fresh(Source::Graph, &["app", "other"]));
        assert!(!drift.fresh(Source::Graph, &[]));

        // A change: the owner is reconciled, and the verification is gone.
        let mut triggers = drift.triggers();
        drift.saw(["sp".to_string(), "unrelated".to_string()]);
        assert_eq!(triggers.try_recv().unwrap(), owner());
        assert!(triggers.try_recv().is_err(), "only verified ids trigger");
        assert!(!drift.fresh(Source::Graph, &["app", "sp"]));
        // A reconcile whose reads started before the change was seen does not count, even recorded after.
        drift.verified(&["sp"], Instant::now() - Duration::from_secs(1), owner());
        assert!(!drift.fresh(Source::Graph, &["app", "sp"]));
        tokio::time::advance(Duration::from_millis(10)).await;
        drift.verified(&["sp"], Instant::now(), owner());
        assert!(drift.fresh(Source::Graph, &["app", "sp"]));

        // A feed that stops succeeding vouches for nothing after two intervals.
        tokio::time::advance(Duration::from_secs(151)).await;
        assert!(!drift.fresh(Source::Graph, &["app", "sp"]));
        // A new round (an expired delta token) restarts continuity: older verifications no longer count.
        drift.round_done(Source::Graph, "", Instant::now(), false);
        assert!(!drift.fresh(Source::Graph, &["app", "sp"]));
    }

    #[tokio::test(start_paused = true)]
    async fn assignments_are_vouched_for_by_their_subscriptions_listing() {
        let drift = Drift::new(Duration::from_secs(60));
        drift.round_done(Source::Arm, S2, Instant::now(), false);
        tokio::time::advance(Duration::from_secs(1)).await;
        drift.verified(&[ASSIGNMENT], Instant::now(), owner());
        assert_eq!(drift.subscriptions(), vec![S1.to_string()]);
        assert!(
            !drift.fresh(Source::Arm, &[ASSIGNMENT]),
            "s1 was never listed"
        );
        drift.round_done(Source::Arm, S1, Instant::now(), false);
        tokio::time::advance(Duration::from_secs(1)).await;
        drift.verified(&[ASSIGNMENT], Instant::now(), owner());
        assert!(drift.fresh(Source::Arm, &[&ASSIGNMENT.to_ascii_uppercase()]));
        // Management-group scopes have no subscription listing: always read.
        let mg = "/providers/Microsoft.Management/managementGroups/mg/providers/Microsoft.Authorization/roleAssignments/y";
        drift.verified(&[mg], Instant::now(), owner());
        assert!(!drift.fresh(Source::Arm, &[mg]));
    }
}
