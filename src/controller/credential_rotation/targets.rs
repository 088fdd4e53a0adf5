//! Publishing the current secret: prove it signs in, reset the AKS clusters' service principal profile (a
//! long-running operation, followed to its end), restart the workloads. Each target's result is kept in
//! status, so a crash or a failure resumes where it stood, and nothing is done twice for one key.

use std::time::Duration;

use k8s_openapi::{
    api::apps::v1::{DaemonSet, Deployment, StatefulSet},
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::EventType,
};
use serde_json::json;

use super::{Context, Error, set_target, signs_in};
use crate::{
    api::{
        CredentialRotation, CredentialRotationStatus,
        credential_rotation::{TargetStatus, WorkloadKind},
    },
    azure::arm::Operation,
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
    TargetStatus {
        kind: kind.into(),
        name: name.into(),
        key_id: Some(key_id.into()),
        state: state.into(),
        message,
        last_transition_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            Timestamp::now(),
        )),
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

fn kind_name(kind: WorkloadKind) -> &'static str {
    match kind {
        WorkloadKind::Deployment => "Deployment",
        WorkloadKind::StatefulSet => "StatefulSet",
        WorkloadKind::DaemonSet => "DaemonSet",
    }
}

/// Publishes `key_id` (whose text is `secret`) everywhere the spec says; Err says what is still missing.
pub async fn publish_all(
    crot: &CredentialRotation,
    ctx: &Context,
    secret_name: &str,
    client_id: &str,
    key_id: &str,
    secret: &str,
    status: &mut CredentialRotationStatus,
) -> Result<(), Error> {
    // The Secret holds it: the rotation wrote it there before anything else.
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
        if let Err(why) = reset_cluster(ctx, status, cluster, client_id, key_id, secret).await {
            failures.push(format!("spec.targets.aksClusters[{i}] {cluster}: {why}"));
        }
    }
    let ns = crot.namespace().unwrap_or_default();
    for (i, w) in spec.restart_workloads.iter().enumerate() {
        let kind = kind_name(w.kind);
        if holds(status, kind, &w.name, key_id) {
            continue;
        }
        match restart(ctx, &ns, w.kind, &w.name, key_id).await {
            Ok(()) => {
                set_target(status, entry(kind, &w.name, key_id, PUBLISHED, None));
                publish(
                    ctx,
                    crot,
                    EventType::Normal,
                    "WorkloadRestarted",
                    &format!("Restarted {kind} {} for secret {key_id}", w.name),
                )
                .await;
            }
            Err(why) => {
                set_target(
                    status,
                    entry(kind, &w.name, key_id, FAILED, Some(why.clone())),
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
    let running = status
        .targets
        .iter()
        .any(|t| t.kind == "AKSCluster" && t.state == PENDING);
    let failed_aks = status
        .targets
        .iter()
        .any(|t| t.kind == "AKSCluster" && t.state == FAILED);
    Err(Error::Publishing {
        reason: if failed_aks {
            "AKSResetFailed"
        } else if running {
            "AKSResetRunning"
        } else {
            "PublishFailed"
        },
        message: format!(
            "the previous secret stays until every target holds {key_id}: {}",
            failures.join("; ")
        ),
    })
}

/// Resets one cluster's service principal profile to the new secret, following the operation for a while.
async fn reset_cluster(
    ctx: &Context,
    status: &mut CredentialRotationStatus,
    cluster: &str,
    client_id: &str,
    key_id: &str,
    secret: &str,
) -> Result<(), String> {
    if secret.len() > AKS_MAX_SECRET_BYTES {
        let why = format!(
            "the secret is {} bytes and AKS accepts at most {AKS_MAX_SECRET_BYTES}",
            secret.len()
        );
        set_target(
            status,
            entry("AKSCluster", cluster, key_id, FAILED, Some(why.clone())),
        );
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
                set_target(
                    status,
                    entry("AKSCluster", cluster, key_id, PUBLISHED, None),
                );
                return Ok(());
            }
            Ok(Some(url)) => url,
            Err(e) => {
                let why = e.to_string();
                set_target(
                    status,
                    entry("AKSCluster", cluster, key_id, FAILED, Some(why.clone())),
                );
                return Err(why);
            }
        },
    };
    let deadline = std::time::Instant::now() + FOLLOW_FOR;
    loop {
        match ctx.arm.operation(&operation).await {
            Ok(Operation::Succeeded) => {
                set_target(
                    status,
                    entry("AKSCluster", cluster, key_id, PUBLISHED, None),
                );
                return Ok(());
            }
            Ok(Operation::Failed(why)) => {
                // Not kept: the next attempt starts a new reset.
                set_target(
                    status,
                    entry("AKSCluster", cluster, key_id, FAILED, Some(why.clone())),
                );
                return Err(why);
            }
            Ok(Operation::InProgress) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => {
                let why = match other {
                    Err(e) => format!("following the reset: {e}"),
                    _ => "the reset is still running".to_string(),
                };
                let mut pending = entry("AKSCluster", cluster, key_id, PENDING, Some(why.clone()));
                pending.operation = Some(operation);
                set_target(status, pending);
                return Err(why);
            }
        }
    }
}

/// Rolls a workload by setting the key id on its pod template; a workload that already carries it is not
/// touched again.
async fn restart(
    ctx: &Context,
    ns: &str,
    kind: WorkloadKind,
    name: &str,
    key_id: &str,
) -> Result<(), String> {
    let patch = Patch::Merge(
        json!({"spec": {"template": {"metadata": {"annotations": {RESTART_ANNOTATION: key_id}}}}}),
    );
    let pp = PatchParams::default();
    let annotation = |t: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>| {
        t.and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(RESTART_ANNOTATION).cloned())
    };
    let missing = |e: kube::Error| match e {
        kube::Error::Api(s) if s.code == 404 => format!("no such workload in namespace {ns}"),
        e => e.to_string(),
    };
    macro_rules! roll {
        ($ty:ty) => {{
            let api: Api<$ty> = Api::namespaced(ctx.client.clone(), ns);
            let current = api.get(name).await.map_err(missing)?;
            if annotation(current.spec.as_ref().map(|s| &s.template)).as_deref() != Some(key_id) {
                api.patch(name, &pp, &patch).await.map_err(missing)?;
            }
        }};
    }
    match kind {
        WorkloadKind::Deployment => roll!(Deployment),
        WorkloadKind::StatefulSet => roll!(StatefulSet),
        WorkloadKind::DaemonSet => roll!(DaemonSet),
    }
    Ok(())
}
