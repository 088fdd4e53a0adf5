//! Publishing the current secret: prove it signs in, reset the AKS clusters' service principal profile (a
//! long-running operation, followed to its end), restart the workloads and wait for their rollout. Each
//! target's result is kept in status, so a crash or a failure resumes where it stood, and nothing is done
//! twice for one key.

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

use super::{Context, Error, set_target, signs_in, write_status};
use crate::{
    api::{
        CredentialRotation, CredentialRotationStatus, ServicePrincipal,
        credential_rotation::{TargetStatus, WorkloadKind},
    },
    azure::{
        arm::Operation,
        error::{AzureError, ErrorClass},
    },
    controller::{
        claims::{self, Claimant},
        policy::aks,
        publish,
    },
};

pub const PUBLISHED: &str = "Published";
pub const PENDING: &str = "Pending";
pub const FAILED: &str = "Failed";
/// Pod-template annotation that restarts a workload: its value is the key id the workload was restarted for,
/// so one rotation restarts it once, however often this runs.
pub use crate::api::protocol::RESTART_ANNOTATION;
/// AKS refuses longer secrets.
const AKS_MAX_SECRET_BYTES: usize = 190;
/// How long one reconcile follows an AKS operation before leaving it to the next.
const FOLLOW_FOR: Duration = Duration::from_secs(30);

fn entry(
    kind: &str,
    name: &str,
    key_id: &str,
    state: &str,
    message: Option<String>,
) -> TargetStatus {
    // Azure's error texts go into status, Events and logs: keep them short.
    let message = message.map(|m| match m.char_indices().nth(300) {
        Some((at, _)) => format!("{}...", &m[..at]),
        None => m,
    });
    TargetStatus {
        kind: kind.into(),
        name: name.into(),
        key_id: Some(key_id.into()),
        state: state.into(),
        message,
        last_transition_time: Some(Time(Timestamp::now())),
        operation: None,
    }
}

fn holds(status: &CredentialRotationStatus, kind: &str, name: &str, key_id: &str) -> bool {
    status.targets.iter().any(|t| {
        t.kind == kind
            && t.name == name
            && t.key_id.as_deref() == Some(key_id)
            && t.state == PUBLISHED
    })
}

/// Workloads already run with `key_id` (it was in the Secret before this rotation knew it): recorded as
/// holding it, so that adopting a credential restarts nothing.
pub fn workloads_hold(
    crot: &CredentialRotation,
    status: &mut CredentialRotationStatus,
    key_id: &str,
) {
    for w in &crot.spec.targets.restart_workloads {
        set_target(
            status,
            entry(kind_name(w.kind), &w.name, key_id, PUBLISHED, None),
        );
    }
}

pub fn kind_name(kind: WorkloadKind) -> &'static str {
    match kind {
        WorkloadKind::Deployment => "Deployment",
        WorkloadKind::StatefulSet => "StatefulSet",
        WorkloadKind::DaemonSet => "DaemonSet",
    }
}

/// The clusters of spec.targets.aksClusters that this reconcile may reset. Only `authorize_clusters` makes
/// one, and `publish_all` resets no other cluster: nothing reaches resetServicePrincipalProfile undecided.
pub struct ClearedClusters(Vec<String>);

impl ClearedClusters {
    fn allows(&self, cluster: &str) -> bool {
        aks::cluster_key(cluster).is_some_and(|k| self.0.contains(&k))
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
    let refused = |r: aks::Refusal| match r {
        aks::Refusal::DeniedByPolicy(m) => Error::DeniedByPolicy(m),
        aks::Refusal::NotUsingApplication(m) => Error::AksClusterNotUsingApplication(m),
    };
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
    let rotations = ctx.claims.rotations();
    let principals = ctx.claims.service_principals();
    let mut cleared = vec![];
    for (i, cluster) in spec.aks_clusters.iter().enumerate() {
        let Some(key) = aks::cluster_key(cluster) else {
            continue;
        };
        let mut claimants = vec![];
        for other in rotations.iter().filter(|r| {
            r.spec
                .targets
                .aks_clusters
                .iter()
                .any(|c| aks::cluster_key(c).as_ref() == Some(&key))
        }) {
            let claimant = Claimant::of(other.as_ref());
            if claimant.namespace == me.namespace && claimant.name == me.name {
                continue;
            }
            // An application not known yet (its ServicePrincipal not in the store, as just after a restart)
            // keeps the claim on the policy alone: a gap in the stores must not hand the cluster over.
            let other_app = rotated_application(other, &principals);
            let other_labels = namespace_labels(ctx, &mut labels_of, &claimant.namespace).await?;
            let may = aks::may_reset(
                &policies,
                &claimant.namespace,
                &other_labels,
                &aks::Reset {
                    index: 0,
                    cluster,
                    current_client_id: other_app.as_ref().and(current[i].as_deref()),
                    app_id: other_app.as_deref().unwrap_or_default(),
                    reassign: other.spec.targets.reassign_aks_clusters,
                },
            );
            if may.is_ok() {
                claimants.push(claimant);
            }
        }
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

/// Publishes `key_id` (whose text is `secret`, already in the Secret) everywhere the spec says; Err says
/// what is still missing.
#[allow(clippy::too_many_arguments)]
pub async fn publish_all(
    crot: &CredentialRotation,
    ctx: &Context,
    cleared: &ClearedClusters,
    secret_name: &str,
    client_id: &str,
    key_id: &str,
    secret: &str,
    status: &mut CredentialRotationStatus,
) -> Result<(), Error> {
    set_target(
        status,
        entry("Secret", secret_name, key_id, PUBLISHED, None),
    );
    // Keep only the entries the spec still names.
    let spec = &crot.spec.targets;
    status.targets.retain(|t| match t.kind.as_str() {
        "Secret" => t.name == secret_name,
        "SignIn" => true,
        "AKSCluster" => spec
            .aks_clusters
            .iter()
            .any(|c| c.eq_ignore_ascii_case(&t.name)),
        _ => spec
            .restart_workloads
            .iter()
            .any(|w| kind_name(w.kind) == t.kind && w.name == t.name),
    });

    if !holds(status, "SignIn", "entra", key_id) {
        match signs_in(ctx, client_id, secret).await {
            Ok(()) => set_target(status, entry("SignIn", "entra", key_id, PUBLISHED, None)),
            Err(why) => {
                set_target(
                    status,
                    entry("SignIn", "entra", key_id, PENDING, Some(why.clone())),
                );
                return Err(Error::Verifying(format!(
                    "the new secret {key_id} does not sign in yet: {why}"
                )));
            }
        }
    }

    let mut failures = vec![];
    for (i, cluster) in spec.aks_clusters.iter().enumerate() {
        if holds(status, "AKSCluster", cluster, key_id) {
            continue;
        }
        if !cleared.allows(cluster) {
            return Err(Error::DeniedByPolicy(format!(
                "spec.targets.aksClusters[{i}]: cluster {cluster} was not authorized by a DelegationPolicy's \
                 aksClusters in this reconcile"
            )));
        }
        if let Err(why) = reset_cluster(crot, ctx, status, cluster, client_id, key_id, secret).await
        {
            failures.push(format!("spec.targets.aksClusters[{i}] {cluster}: {why}"));
        }
    }
    let ns = crot.namespace().unwrap_or_default();
    for (i, w) in spec.restart_workloads.iter().enumerate() {
        let kind = kind_name(w.kind);
        if holds(status, kind, &w.name, key_id) {
            continue;
        }
        let result = match restart(ctx, &ns, w.kind, &w.name, key_id).await {
            Ok(Rollout { patched, done }) => {
                if patched {
                    publish(
                        ctx,
                        crot,
                        EventType::Normal,
                        "WorkloadRestarted",
                        &format!("Restarted {kind} {} for secret {key_id}", w.name),
                    )
                    .await;
                }
                if done {
                    Ok(())
                } else {
                    Err((PENDING, "rolling out".to_string()))
                }
            }
            Err(why) => Err((FAILED, why)),
        };
        match result {
            Ok(()) => set_target(status, entry(kind, &w.name, key_id, PUBLISHED, None)),
            Err((state, why)) => {
                set_target(
                    status,
                    entry(kind, &w.name, key_id, state, Some(why.clone())),
                );
                failures.push(format!(
                    "spec.targets.restartWorkloads[{i}] {kind} {}: {why}",
                    w.name
                ));
            }
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    let any = |aks: bool, state: &str| {
        status.targets.iter().any(|t| {
            (t.kind == "AKSCluster") == aks
                && t.state == state
                && t.key_id.as_deref() == Some(key_id)
        })
    };
    Err(Error::Publishing {
        reason: if any(true, FAILED) {
            "AKSResetFailed"
        } else if any(false, FAILED) {
            "PublishFailed"
        } else if any(true, PENDING) {
            "AKSResetRunning"
        } else {
            "WaitingForRollout"
        },
        message: format!(
            "the previous secret stays until every target holds {key_id}: {}",
            failures.join("; ")
        ),
    })
}

/// Resets one cluster's service principal profile to the new secret, following the operation for a while.
async fn reset_cluster(
    crot: &CredentialRotation,
    ctx: &Context,
    status: &mut CredentialRotationStatus,
    cluster: &str,
    client_id: &str,
    key_id: &str,
    secret: &str,
) -> Result<(), String> {
    let set = |status: &mut CredentialRotationStatus,
               state: &str,
               why: Option<String>,
               operation: Option<String>| {
        let mut e = entry("AKSCluster", cluster, key_id, state, why);
        e.operation = operation;
        set_target(status, e);
    };
    if secret.len() > AKS_MAX_SECRET_BYTES {
        let why = format!(
            "the secret is {} bytes and AKS accepts at most {AKS_MAX_SECRET_BYTES}",
            secret.len()
        );
        set(status, FAILED, Some(why.clone()), None);
        return Err(why);
    }
    // A reset for this key already running (a previous reconcile, or one before a restart): follow it.
    let running = status
        .targets
        .iter()
        .find(|t| {
            t.kind == "AKSCluster" && t.name == cluster && t.key_id.as_deref() == Some(key_id)
        })
        .and_then(|t| t.operation.clone());
    let operation = match running {
        Some(url) => url,
        None => match ctx
            .arm
            .reset_service_principal_profile(cluster, client_id, secret)
            .await
        {
            Ok(None) => {
                set(status, PUBLISHED, None, None);
                return Ok(());
            }
            Ok(Some(url)) => {
                // Kept before it is followed: after a restart this operation is resumed, not started again
                // (AKS refuses a second reset while one runs).
                set(
                    status,
                    PENDING,
                    Some("reset running".into()),
                    Some(url.clone()),
                );
                write_status(crot, ctx, status.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                url
            }
            Err(e @ AzureError::Api { status: 409, .. }) if e.code() == "OperationNotAllowed" => {
                // Another reset runs on the cluster (for an earlier key, or one whose URL was lost): wait for
                // it to end, then reset again.
                let why = "another reset is running on the cluster".to_string();
                set(status, PENDING, Some(why.clone()), None);
                return Err(why);
            }
            Err(e) => {
                let why = e.to_string();
                set(status, FAILED, Some(why.clone()), None);
                return Err(why);
            }
        },
    };
    let deadline = std::time::Instant::now() + FOLLOW_FOR;
    loop {
        match ctx.arm.operation(&operation).await {
            Ok(Operation::Succeeded) => {
                set(status, PUBLISHED, None, None);
                return Ok(());
            }
            Ok(Operation::Failed(why)) => {
                // The operation is dropped: the next attempt starts a new reset.
                set(status, FAILED, Some(why.clone()), None);
                return Err(why);
            }
            Ok(Operation::InProgress) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            // The operation is gone (expired, or ARM forgot it): start again next time.
            Err(e) if e.class() == ErrorClass::NotFound => {
                let why = format!("the reset operation is gone: {e}");
                set(status, FAILED, Some(why.clone()), None);
                return Err(why);
            }
            other => {
                let why = match other {
                    Err(e) => format!("following the reset: {e}"),
                    _ => "the reset is still running".to_string(),
                };
                set(status, PENDING, Some(why.clone()), Some(operation));
                return Err(why);
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
