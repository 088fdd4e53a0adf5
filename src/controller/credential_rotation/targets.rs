//! Publishing the current secret: prove it signs in, reset the AKS clusters' service principal profile (a
//! long-running operation, followed to its end), restart the workloads and wait for their rollout. Each
//! target's result is kept in status, so a crash or a failure resumes where it stood, and nothing is done
//! twice for one key.
//!
//! The bookkeeping of those results (which target holds which key) is pure and shared by the plan, which
//! decides which targets still need the key, and by act, which records what each one did.

use crate::controller::clock;
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment, StatefulSet},
        core::v1::Namespace,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::EventType,
};
use serde_json::json;

use super::{Context, Error};
use crate::controller::reconcile;
use crate::{
    api::{
        CredentialRotation, CredentialRotationStatus, ServicePrincipal,
        credential_rotation::{
            SIGN_IN_TARGET, TargetKind, TargetState, TargetStatus, WorkloadKind,
        },
    },
    azure::{
        arm::Operation,
        error::{AzureError, ErrorClass},
    },
    controller::{
        claims::{self, Claimant},
        credentials::Kind,
        policy::aks,
        publish, verification,
    },
};

/// Pod-template annotation that restarts a workload: its value is the key id the workload was restarted for,
/// so one rotation restarts it once, however often this runs.
pub use crate::api::protocol::RESTART_ANNOTATION;
/// AKS refuses longer secrets.
const AKS_MAX_SECRET_BYTES: usize = 190;
/// How long one reconcile follows an AKS operation before leaving it to the next.
const FOLLOW_FOR: Duration = Duration::from_secs(30);

/// A target's entry in status, stamped `now`.
pub(super) fn entry(
    kind: TargetKind,
    name: &str,
    key_id: &str,
    state: TargetState,
    message: Option<String>,
    now: Timestamp,
) -> TargetStatus {
    // Azure's error texts go into status, Events and logs: keep them short.
    let message = message.map(|m| match m.char_indices().nth(300) {
        Some((at, _)) => format!("{}...", &m[..at]),
        None => m,
    });
    TargetStatus {
        kind: kind.as_str().into(),
        name: name.into(),
        key_id: Some(key_id.into()),
        state: state.as_str().into(),
        message,
        last_transition_time: Some(Time(now)),
        operation: None,
        version: None,
    }
}

/// Whether the target `kind`/`name` holds `key_id` (by the name exactly as the spec spells it).
pub(super) fn holds(
    status: &CredentialRotationStatus,
    kind: TargetKind,
    name: &str,
    key_id: &str,
) -> bool {
    status.targets.iter().any(|t| {
        t.kind == kind.as_str()
            && t.name == name
            && t.key_id.as_deref() == Some(key_id)
            && t.state == TargetState::Published.as_str()
    })
}

/// A target's entry, updated in place (or added); its transition time moves only when its state or key does.
pub(super) fn set_target(status: &mut CredentialRotationStatus, entry: TargetStatus) {
    match status
        .targets
        .iter_mut()
        .find(|t| t.kind == entry.kind && t.name == entry.name)
    {
        Some(t) => {
            let moved = t.state != entry.state || t.key_id != entry.key_id;
            let since = if moved {
                entry.last_transition_time.clone()
            } else {
                t.last_transition_time.clone()
            };
            *t = TargetStatus {
                last_transition_time: since,
                ..entry
            };
        }
        None => status.targets.push(entry),
    }
}

/// Workloads already run with `key_id` (it was in the Secret before this rotation knew it): recorded as
/// holding it, so that adopting a credential restarts nothing.
pub(super) fn workloads_hold(
    crot: &CredentialRotation,
    status: &mut CredentialRotationStatus,
    key_id: &str,
    now: Timestamp,
) {
    for w in &crot.spec.targets.restart_workloads {
        let kind = TargetKind::Workload(w.kind);
        set_target(
            status,
            entry(kind, &w.name, key_id, TargetState::Published, None, now),
        );
    }
}

/// Whether every target the spec names holds the current key (the Secret and the sign-in check included).
pub(super) fn all_published(
    crot: &CredentialRotation,
    status: &CredentialRotationStatus,
    secret: Option<&str>,
    vaults: &[String],
) -> bool {
    let Some(key) = status.current_key_id.as_deref() else {
        return false;
    };
    let holds = |kind: TargetKind, name: &str| {
        status.targets.iter().any(|t| {
            t.kind == kind.as_str()
                && t.name.eq_ignore_ascii_case(name)
                && t.key_id.as_deref() == Some(key)
                && t.state == TargetState::Published.as_str()
        })
    };
    let spec = &crot.spec.targets;
    secret.is_none_or(|s| holds(TargetKind::Secret, s))
        && holds(TargetKind::SignIn, SIGN_IN_TARGET)
        && vaults.iter().all(|v| holds(TargetKind::KeyVaultSecret, v))
        && spec
            .aks_clusters
            .iter()
            .all(|c| holds(TargetKind::AksCluster, c))
        && spec
            .restart_workloads
            .iter()
            .all(|w| holds(TargetKind::Workload(w.kind), &w.name))
}

/// Records that the Secret `secret_name` holds `key_id`, and forgets the entries of targets the spec no
/// longer names.
pub(super) fn secret_holds(
    crot: &CredentialRotation,
    status: &mut CredentialRotationStatus,
    secret_name: Option<&str>,
    vaults: &[String],
    key_id: &str,
    now: Timestamp,
) {
    if let Some(secret_name) = secret_name {
        let held = entry(
            TargetKind::Secret,
            secret_name,
            key_id,
            TargetState::Published,
            None,
            now,
        );
        set_target(status, held);
    }
    let spec = &crot.spec.targets;
    status.targets.retain(|t| match t.kind.as_str() {
        k if k == TargetKind::Secret.as_str() => Some(t.name.as_str()) == secret_name,
        k if k == TargetKind::SignIn.as_str() => true,
        k if k == TargetKind::KeyVaultSecret.as_str() => vaults.contains(&t.name),
        k if k == TargetKind::AksCluster.as_str() => spec
            .aks_clusters
            .iter()
            .any(|c| c.eq_ignore_ascii_case(&t.name)),
        _ => spec
            .restart_workloads
            .iter()
            .any(|w| w.kind.as_str() == t.kind && w.name == t.name),
    });
}

/// The failure of a publication that left `failures` behind, named by the worst target state for `key_id`:
/// a cluster that refused it, then a workload that did, then a reset still running, then a rollout.
pub(super) fn not_published(
    status: &CredentialRotationStatus,
    key_id: &str,
    failures: &[String],
) -> Error {
    let any = |aks: bool, state: TargetState| {
        status.targets.iter().any(|t| {
            (t.kind == TargetKind::AksCluster.as_str()) == aks
                && t.state == state.as_str()
                && t.key_id.as_deref() == Some(key_id)
        })
    };
    Error::Publishing {
        reason: if any(true, TargetState::Failed) {
            "AKSResetFailed"
        } else if any(false, TargetState::Failed) {
            "PublishFailed"
        } else if any(true, TargetState::Pending) {
            "AKSResetRunning"
        } else {
            "WaitingForRollout"
        },
        message: format!(
            "the previous secret stays until every target holds {key_id}: {}",
            failures.join("; ")
        ),
    }
}

/// The clusters of spec.targets.aksClusters that this reconcile may reset. Only `authorize_clusters` makes
/// one, and nothing resets another cluster: nothing reaches resetServicePrincipalProfile undecided.
#[derive(Debug)]
pub struct ClearedClusters(Vec<String>);

impl ClearedClusters {
    pub(super) fn allows(&self, cluster: &str) -> bool {
        aks::cluster_key(cluster).is_some_and(|k| self.0.contains(&k))
    }

    /// Clearances as a test wants them, without a policy to decide them.
    #[cfg(test)]
    pub(super) fn of(clusters: &[&str]) -> Self {
        ClearedClusters(
            clusters
                .iter()
                .filter_map(|c| aks::cluster_key(c))
                .collect(),
        )
    }
}

/// Decides every cluster the rotation names before anything is done for any of them (before a password is
/// even added): a DelegationPolicy selecting the namespace lists it, it runs as the application rotated
/// (`app_id`) unless moving it is asked for and allowed, and no other rotation holds it.
pub async fn authorize_clusters(
    crot: &CredentialRotation,
    ctx: &Context,
    app_id: &str,
) -> Result<ClearedClusters, Error> {
    let spec = &crot.spec.targets;
    if spec.aks_clusters.is_empty() {
        return Ok(ClearedClusters(vec![]));
    }
    let ns = crot.namespace().unwrap_or_default();
    let mut labels_of: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let labels = namespace_labels(ctx, &mut labels_of, &ns).await?;
    let policies = ctx.policies.state();
    let reset = |index, cluster, current_client_id| aks::Reset {
        index,
        cluster,
        current_client_id,
        app_id,
        reassign: spec.reassign_aks_clusters,
    };
    // The policy first, so that a namespace learns nothing about a cluster it may not touch (not even who
    // else names it).
    for (i, cluster) in spec.aks_clusters.iter().enumerate() {
        aks::may_reset(&policies, &ns, &labels, &reset(i, cluster, None)).map_err(refused)?;
    }
    let mut current = Vec::with_capacity(spec.aks_clusters.len());
    for cluster in &spec.aks_clusters {
        // A cluster without a service principal profile runs as a managed identity, as "msi" says.
        current.push(ctx.arm.managed_cluster(cluster).await?.map(|c| {
            c.properties
                .service_principal_profile
                .map(|p| p.client_id)
                .unwrap_or_else(|| "msi".into())
        }));
    }
    for (i, cluster) in spec.aks_clusters.iter().enumerate() {
        aks::may_reset(
            &policies,
            &ns,
            &labels,
            &reset(i, cluster, current[i].as_deref()),
        )
        .map_err(refused)?;
    }
    // Then the claims: among the rotations that would be allowed this same reset, the oldest holds the
    // cluster. Decided the same way on every reconcile of every claimant, so two rotations never take turns;
    // one that names a cluster it may not reset holds nothing, so naming a cluster first does not block it.
    let me = Claimant::of(crot);
    let mut cleared = vec![];
    for (i, cluster) in spec.aks_clusters.iter().enumerate() {
        let Some(key) = aks::cluster_key(cluster) else {
            continue;
        };
        let claimants =
            cluster_claimants(ctx, &me, &mut labels_of, cluster, current[i].as_deref()).await?;
        if let Err(holder) = claims::check(&me, &claimants) {
            return Err(Error::Claimed(format!(
                "spec.targets.aksClusters[{i}]: cluster {cluster} is claimed by {holder}, the oldest rotation allowed \
                 to reset it; this rotation changes nothing until {holder} no longer names it"
            )));
        }
        cleared.push(key);
    }
    Ok(ClearedClusters(cleared))
}

fn refused(r: aks::Refusal) -> Error {
    match r {
        aks::Refusal::DeniedByPolicy(m) => Error::DeniedByPolicy(m),
        aks::Refusal::NotUsingApplication(m) => Error::AksClusterNotUsingApplication(m),
    }
}

/// The other rotations naming `cluster` that a policy would allow to reset it (whose client id is `current`
/// now): those that may hold it before `me`.
async fn cluster_claimants(
    ctx: &Context,
    me: &Claimant,
    labels_of: &mut BTreeMap<String, BTreeMap<String, String>>,
    cluster: &str,
    current: Option<&str>,
) -> Result<Vec<Claimant>, Error> {
    let key = aks::cluster_key(cluster);
    let policies = ctx.policies.state();
    let principals = ctx.claims.service_principals();
    let mut claimants = vec![];
    for other in ctx.claims.rotations().iter().filter(|r| {
        r.spec
            .targets
            .aks_clusters
            .iter()
            .any(|c| aks::cluster_key(c) == key)
    }) {
        let claimant = Claimant::of(other.as_ref());
        if claimant.namespace == me.namespace && claimant.name == me.name {
            continue;
        }
        // An application not known yet (its ServicePrincipal not in the store, as just after a restart)
        // keeps the claim on the policy alone: a gap in the stores must not hand the cluster over.
        let other_app = rotated_application(other, &principals);
        let other_labels = namespace_labels(ctx, labels_of, &claimant.namespace).await?;
        let may = aks::may_reset(
            &policies,
            &claimant.namespace,
            &other_labels,
            &aks::Reset {
                index: 0,
                cluster,
                current_client_id: other_app.as_ref().and(current),
                app_id: other_app.as_deref().unwrap_or_default(),
                reassign: other.spec.targets.reassign_aks_clusters,
            },
        );
        if may.is_ok() {
            claimants.push(claimant);
        }
    }
    Ok(claimants)
}

/// The application a rotation rotates, as far as the stores know: None for one whose ServicePrincipal is not
/// known or has no application yet.
fn rotated_application(
    crot: &CredentialRotation,
    principals: &[Arc<ServicePrincipal>],
) -> Option<String> {
    if let Some(app) = &crot.spec.application_id {
        return Some(app.clone());
    }
    let reference = crot.spec.service_principal_ref.as_ref()?;
    principals
        .iter()
        .find(|sp| sp.namespace() == crot.namespace() && sp.name_any() == reference.name)
        .and_then(|sp| sp.status.as_ref()?.app_id.clone())
}

/// A namespace's labels, read once per reconcile.
pub(super) async fn namespace_labels(
    ctx: &Context,
    seen: &mut BTreeMap<String, BTreeMap<String, String>>,
    ns: &str,
) -> Result<BTreeMap<String, String>, Error> {
    if let Some(labels) = seen.get(ns) {
        return Ok(labels.clone());
    }
    let labels = Api::<Namespace>::all(ctx.client.clone())
        .get(ns)
        .await?
        .metadata
        .labels
        .unwrap_or_default();
    seen.insert(ns.to_string(), labels.clone());
    Ok(labels)
}

/// What every publish step needs: whose secret, which key, and its text. The text goes only to Entra (the
/// sign-in) and to AKS (the reset), never into a message.
pub(super) struct Publication<'a> {
    pub crot: &'a CredentialRotation,
    pub ctx: &'a Context,
    pub client_id: &'a str,
    pub key_id: &'a str,
    /// The password's text, or the certificate's PEM.
    pub text: &'a str,
    pub kind: Kind,
}

impl Publication<'_> {
    fn set(
        &self,
        status: &mut CredentialRotationStatus,
        kind: TargetKind,
        name: &str,
        state: TargetState,
        why: Option<String>,
        operation: Option<String>,
    ) {
        let mut e = entry(kind, name, self.key_id, state, why, clock::now());
        e.operation = operation;
        set_target(status, e);
    }

    /// Proves that Entra accepts the key everywhere (see `verification`): a round of sign-ins when one is
    /// due, recorded in status; until enough have passed in a row over the window, nothing else is published
    /// and the reconcile stops, to look again when the next round is due.
    pub(super) async fn verify(&self, status: &mut CredentialRotationStatus) -> Result<(), Error> {
        let candidate = verification::Candidate {
            key_id: self.key_id,
            client_id: self.client_id,
            kind: self.kind,
            text: self.text,
        };
        let generation = self.crot.metadata.generation;
        let (record, conditions) = (&mut status.verification, &mut status.conditions);
        let due = verification::advance(self.ctx, candidate, record, conditions, generation).await;
        let progress = status.verification.as_ref().map(verification::progress);
        let Some(until) = due else {
            let published = TargetState::Published;
            self.set(
                status,
                TargetKind::SignIn,
                SIGN_IN_TARGET,
                published,
                None,
                None,
            );
            return Ok(());
        };
        let message = progress.unwrap_or_default();
        let pending = TargetState::Pending;
        self.set(
            status,
            TargetKind::SignIn,
            SIGN_IN_TARGET,
            pending,
            Some(message.clone()),
            None,
        );
        Err(Error::Waiting {
            reason: "VerifyingCredential",
            message,
            until,
        })
    }

    /// Resets cluster `index` of the spec; Ok(Some) says why it does not hold the key yet.
    pub(super) async fn reset(
        &self,
        cleared: &ClearedClusters,
        status: &mut CredentialRotationStatus,
        index: usize,
        cluster: &str,
    ) -> Result<Option<String>, Error> {
        if !cleared.allows(cluster) {
            return Err(Error::DeniedByPolicy(format!(
                "spec.targets.aksClusters[{index}]: cluster {cluster} was not authorized by a DelegationPolicy's \
                 aksClusters in this reconcile"
            )));
        }
        Ok(self
            .reset_cluster(status, cluster)
            .await
            .err()
            .map(|why| format!("spec.targets.aksClusters[{index}] {cluster}: {why}")))
    }

    /// Restarts workload `index` of the spec; Some says why it does not hold the key yet.
    pub(super) async fn restart(
        &self,
        status: &mut CredentialRotationStatus,
        index: usize,
        kind: WorkloadKind,
        name: &str,
    ) -> Option<String> {
        let ns = self.crot.namespace().unwrap_or_default();
        let result = match restart(self.ctx, &ns, kind, name, self.key_id).await {
            Ok(Rollout { patched, done }) => {
                if patched {
                    let note = format!(
                        "Restarted {} {name} for secret {}",
                        kind.as_str(),
                        self.key_id
                    );
                    let normal = EventType::Normal;
                    publish(self.ctx, self.crot, normal, "WorkloadRestarted", &note).await;
                }
                if done {
                    Ok(())
                } else {
                    Err((TargetState::Pending, "rolling out".to_string()))
                }
            }
            Err(why) => Err((TargetState::Failed, why)),
        };
        let target = TargetKind::Workload(kind);
        match result {
            Ok(()) => {
                self.set(status, target, name, TargetState::Published, None, None);
                None
            }
            Err((state, why)) => {
                self.set(status, target, name, state, Some(why.clone()), None);
                let kind = kind.as_str();
                Some(format!(
                    "spec.targets.restartWorkloads[{index}] {kind} {name}: {why}"
                ))
            }
        }
    }

    /// Resets one cluster's service principal profile to the new secret, following the operation for a while.
    async fn reset_cluster(
        &self,
        status: &mut CredentialRotationStatus,
        cluster: &str,
    ) -> Result<(), String> {
        let aks = TargetKind::AksCluster;
        if self.text.len() > AKS_MAX_SECRET_BYTES {
            let why = format!(
                "the secret is {} bytes and AKS accepts at most {AKS_MAX_SECRET_BYTES}",
                self.text.len()
            );
            self.set(
                status,
                aks,
                cluster,
                TargetState::Failed,
                Some(why.clone()),
                None,
            );
            return Err(why);
        }
        // A reset for this key already running (a previous reconcile, or one before a restart): follow it.
        let running = status
            .targets
            .iter()
            .find(|t| {
                t.kind == aks.as_str()
                    && t.name == cluster
                    && t.key_id.as_deref() == Some(self.key_id)
            })
            .and_then(|t| t.operation.clone());
        let operation = match running {
            Some(url) => url,
            None => match self.start_reset(status, cluster).await? {
                Some(url) => url,
                None => return Ok(()),
            },
        };
        self.follow(status, cluster, operation).await
    }

    /// Starts a reset: Some(operation) while it runs, None when it is done at once.
    async fn start_reset(
        &self,
        status: &mut CredentialRotationStatus,
        cluster: &str,
    ) -> Result<Option<String>, String> {
        let aks = TargetKind::AksCluster;
        let ctx = self.ctx;
        match ctx
            .arm
            .reset_service_principal_profile(cluster, self.client_id, self.text)
            .await
        {
            Ok(None) => {
                self.set(status, aks, cluster, TargetState::Published, None, None);
                Ok(None)
            }
            Ok(Some(url)) => {
                // Kept before it is followed: after a restart this operation is resumed, not started again
                // (AKS refuses a second reset while one runs).
                let why = Some("reset running".into());
                let pending = TargetState::Pending;
                self.set(status, aks, cluster, pending, why, Some(url.clone()));
                reconcile::write_status(ctx, self.crot, status)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Some(url))
            }
            Err(e @ AzureError::Api { status: 409, .. }) if e.code() == "OperationNotAllowed" => {
                // Another reset runs on the cluster (for an earlier key, or one whose URL was lost): wait for
                // it to end, then reset again.
                let why = "another reset is running on the cluster".to_string();
                self.set(
                    status,
                    aks,
                    cluster,
                    TargetState::Pending,
                    Some(why.clone()),
                    None,
                );
                Err(why)
            }
            Err(e) => {
                let why = e.to_string();
                self.set(
                    status,
                    aks,
                    cluster,
                    TargetState::Failed,
                    Some(why.clone()),
                    None,
                );
                Err(why)
            }
        }
    }

    /// Follows a running reset for up to [`FOLLOW_FOR`].
    async fn follow(
        &self,
        status: &mut CredentialRotationStatus,
        cluster: &str,
        operation: String,
    ) -> Result<(), String> {
        let aks = TargetKind::AksCluster;
        let deadline = std::time::Instant::now() + FOLLOW_FOR;
        loop {
            match self.ctx.arm.operation(&operation).await {
                Ok(Operation::Succeeded) => {
                    self.set(status, aks, cluster, TargetState::Published, None, None);
                    return Ok(());
                }
                Ok(Operation::Failed(why)) => {
                    // The operation is dropped: the next attempt starts a new reset.
                    self.set(
                        status,
                        aks,
                        cluster,
                        TargetState::Failed,
                        Some(why.clone()),
                        None,
                    );
                    return Err(why);
                }
                Ok(Operation::InProgress) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                // The operation is gone (expired, or ARM forgot it): start again next time.
                Err(e) if e.class() == ErrorClass::NotFound => {
                    let why = format!("the reset operation is gone: {e}");
                    self.set(
                        status,
                        aks,
                        cluster,
                        TargetState::Failed,
                        Some(why.clone()),
                        None,
                    );
                    return Err(why);
                }
                other => {
                    let why = match other {
                        Err(e) => format!("following the reset: {e}"),
                        _ => "the reset is still running".to_string(),
                    };
                    let pending = TargetState::Pending;
                    self.set(
                        status,
                        aks,
                        cluster,
                        pending,
                        Some(why.clone()),
                        Some(operation),
                    );
                    return Err(why);
                }
            }
        }
    }
}

/// What a restart did: whether it patched the pod template now, and whether the rollout has finished.
struct Rollout {
    patched: bool,
    done: bool,
}

/// Rolls a workload by setting the key id on its pod template (a workload that already carries it is not
/// touched again), and says whether its rollout has finished: only then do its pods hold the new secret.
async fn restart(
    ctx: &Context,
    ns: &str,
    kind: WorkloadKind,
    name: &str,
    key_id: &str,
) -> Result<Rollout, String> {
    let patch = Patch::Merge(
        json!({"spec": {"template": {"metadata": {"annotations": {RESTART_ANNOTATION: key_id}}}}}),
    );
    let pp = PatchParams::default();
    let carries = |t: &k8s_openapi::api::core::v1::PodTemplateSpec| {
        t.metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(RESTART_ANNOTATION))
            .is_some_and(|v| v == key_id)
    };
    let missing = |e: kube::Error| match e {
        kube::Error::Api(s) if s.code == 404 => format!("no such workload in namespace {ns}"),
        e => e.to_string(),
    };
    // Patch unless it carries the key; done when the controller has seen the change and updated every
    // replica. `progress` gives (observed generation, updated replicas, desired replicas).
    macro_rules! roll {
        ($ty:ty, $progress:expr) => {{
            let api: Api<$ty> = Api::namespaced(ctx.client.clone(), ns);
            let mut current = api.get(name).await.map_err(missing)?;
            let patched = !current.spec.as_ref().is_some_and(|s| carries(&s.template));
            if patched {
                current = api.patch(name, &pp, &patch).await.map_err(missing)?;
            }
            let (observed, updated, desired): (Option<i64>, i32, i32) = $progress(&current);
            Rollout {
                patched,
                done: observed >= current.metadata.generation && updated >= desired,
            }
        }};
    }
    Ok(match kind {
        WorkloadKind::Deployment => roll!(Deployment, |d: &Deployment| {
            let s = d.status.clone().unwrap_or_default();
            let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            (
                s.observed_generation,
                s.updated_replicas.unwrap_or(0),
                desired,
            )
        }),
        WorkloadKind::StatefulSet => roll!(StatefulSet, |d: &StatefulSet| {
            let s = d.status.clone().unwrap_or_default();
            let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            (
                s.observed_generation,
                s.updated_replicas.unwrap_or(0),
                desired,
            )
        }),
        WorkloadKind::DaemonSet => roll!(DaemonSet, |d: &DaemonSet| {
            let s = d.status.clone().unwrap_or_default();
            (
                s.observed_generation,
                s.updated_number_scheduled.unwrap_or(0),
                s.desired_number_scheduled,
            )
        }),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{controller::reconcile::Failure, fixtures::credential_rotation_with, fixtures::t0};

    const AKS: &str = "/subscriptions/00000000-0000-4000-8000-0000000000a1/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/aks1";

    fn status(entries: &[(TargetKind, &str, &str, TargetState)]) -> CredentialRotationStatus {
        let mut status = CredentialRotationStatus::default();
        for (kind, name, key, state) in entries {
            set_target(&mut status, entry(*kind, name, key, *state, None, t0()));
        }
        status
    }

    #[test]
    fn a_publication_fails_with_its_worst_target_for_the_key() {
        let deployment = TargetKind::Workload(WorkloadKind::Deployment);
        let (published, pending, failed) = (
            TargetState::Published,
            TargetState::Pending,
            TargetState::Failed,
        );
        let cases = [
            (
                "a cluster refused the key",
                vec![
                    (TargetKind::AksCluster, AKS, "k2", failed),
                    (deployment, "api", "k2", failed),
                ],
                "AKSResetFailed",
            ),
            (
                "a workload refused it",
                vec![
                    (TargetKind::AksCluster, AKS, "k2", pending),
                    (deployment, "api", "k2", failed),
                ],
                "PublishFailed",
            ),
            (
                "a reset still runs",
                vec![
                    (TargetKind::AksCluster, AKS, "k2", pending),
                    (deployment, "api", "k2", pending),
                ],
                "AKSResetRunning",
            ),
            (
                "a rollout is under way",
                vec![
                    (TargetKind::AksCluster, AKS, "k2", published),
                    (deployment, "api", "k2", pending),
                ],
                "WaitingForRollout",
            ),
            (
                "a failure for an older key does not count",
                vec![
                    (TargetKind::AksCluster, AKS, "k1", failed),
                    (deployment, "api", "k2", pending),
                ],
                "WaitingForRollout",
            ),
        ];
        for (name, entries, reason) in cases {
            let err = not_published(&status(&entries), "k2", &["why".into()]);
            assert_eq!(err.reason(), reason, "{name}");
            assert!(err.to_string().contains("holds k2: why"), "{name}: {err}");
        }
    }

    #[test]
    fn the_secret_holds_the_key_and_targets_the_spec_dropped_are_forgotten() {
        let crot = credential_rotation_with(
            "rot",
            json!({"servicePrincipalRef": {"name": "web"}, "targets": {"aksClusters": [AKS.to_uppercase()]}}),
        );
        let deployment = TargetKind::Workload(WorkloadKind::Deployment);
        let mut s = status(&[
            (
                TargetKind::Secret,
                "old-secret",
                "k1",
                TargetState::Published,
            ),
            (
                TargetKind::SignIn,
                SIGN_IN_TARGET,
                "k1",
                TargetState::Published,
            ),
            (TargetKind::AksCluster, AKS, "k1", TargetState::Published),
            (deployment, "api", "k1", TargetState::Published),
        ]);
        secret_holds(&crot, &mut s, Some("web"), &[], "k2", t0());
        let left: Vec<(&str, &str, Option<&str>)> = s
            .targets
            .iter()
            .map(|t| (t.kind.as_str(), t.name.as_str(), t.key_id.as_deref()))
            .collect();
        assert_eq!(
            left,
            [
                ("SignIn", "entra", Some("k1")),
                ("AKSCluster", AKS, Some("k1")),
                ("Secret", "web", Some("k2")),
            ]
        );
        assert!(holds(&s, TargetKind::Secret, "web", "k2"));
        assert!(!holds(&s, TargetKind::SignIn, SIGN_IN_TARGET, "k2"));
    }
}
