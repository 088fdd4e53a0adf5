//! Publishing the current secret: prove it signs in, reset the AKS clusters' service principal profile (a
//! long-running operation, followed to its end), restart the workloads and wait for their rollout. Each
//! target's result is kept in status, so a crash or a failure resumes where it stood, and nothing is done
//! twice for one key.

use std::time::Duration;

use k8s_openapi::{
    api::apps::v1::{DaemonSet, Deployment, StatefulSet},
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
        CredentialRotation, CredentialRotationStatus,
        credential_rotation::{TargetStatus, WorkloadKind},
    },
    azure::{
        arm::Operation,
        error::{AzureError, ErrorClass},
    },
    controller::publish,
};

pub const PUBLISHED: &str = "Published";
pub const PENDING: &str = "Pending";
pub const FAILED: &str = "Failed";
/// Pod-template annotation that restarts a workload: its value is the key id the workload was restarted for,
/// so one rotation restarts it once, however often this runs.
pub const RESTART_ANNOTATION: &str = "entra-operator.io/restarted-for-key";
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

/// Publishes `key_id` (whose text is `secret`, already in the Secret) everywhere the spec says; Err says
/// what is still missing.
pub async fn publish_all(
    crot: &CredentialRotation,
    ctx: &Context,
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
