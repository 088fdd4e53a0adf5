//! On delete: a rotation in progress is finished first (the previous password goes only when its overlap is
//! over and every target holds its successor); then the credentials in use stay, the rotation's own Secret
//! included, and the ServicePrincipal takes its passwords back. What to do is decided by the pure functions
//! here; `cleanup` does it.

use crate::controller::clock;
use k8s_openapi::{
    api::core::v1::Secret,
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::json;

use super::{Context, Error, converge, subject};
use crate::controller::reconcile;
use crate::{
    api::{
        CredentialRotation, CredentialRotationStatus, ServicePrincipal,
        protocol::ROTATED_BY_ANNOTATION,
    },
    controller::secrets,
};

/// What a deleted rotation hands back once nothing is left to finish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Release {
    /// The rotation's own Secret (with applicationId) is orphaned rather than collected with the rotation:
    /// something may still read it.
    OrphanSecret { name: String },
    /// The ServicePrincipal manages its own passwords again.
    Unmark { service_principal: String },
}

/// What a rotation hands back on deletion.
fn releases(crot: &CredentialRotation) -> Vec<Release> {
    let mut releases = vec![];
    if crot.spec.application_id.is_some() {
        let name = subject::own_secret(crot).name;
        releases.push(Release::OrphanSecret { name });
    }
    if let Some(reference) = &crot.spec.service_principal_ref {
        let service_principal = reference.name.clone();
        releases.push(Release::Unmark { service_principal });
    }
    releases
}

/// What deletion does, given the finishing reconcile's result (`finished`; None when no rotation was in
/// progress, so none ran): Ok names what to hand back; Err is the failure or the wait to report instead,
/// with `status` (as the finishing reconcile left it) to write first.
pub(crate) fn deletion(
    crot: &CredentialRotation,
    status: &mut CredentialRotationStatus,
    finished: Option<Result<(), Error>>,
    now: Timestamp,
) -> Result<Vec<Release>, Error> {
    match finished {
        // Nothing left to finish where the application or the right to touch it is gone.
        Some(Err(
            Error::ServicePrincipalNotFound(_)
            | Error::ApplicationNotFound(_)
            | Error::ApplicationNotOwned(_)
            | Error::DeniedByPolicy(_)
            | Error::Claimed(_)
            | Error::AksClusterNotUsingApplication(_),
        )) => status.previous_key_id = None,
        Some(Err(e)) => return Err(e),
        Some(Ok(())) | None => {}
    }
    let Some(previous) = status.previous_key_id.clone() else {
        return Ok(releases(crot));
    };
    let until = status
        .previous_key_removal_time
        .as_ref()
        .map(|t| t.0)
        .unwrap_or_else(|| now + SignedDuration::from_secs(5));
    Err(Error::Waiting {
        reason: "FinishingRotation",
        message: format!(
            "deletion waits for the previous password {previous} to go once every target holds its successor"
        ),
        until,
    })
}

pub(super) async fn cleanup(crot: &CredentialRotation, ctx: &Context) -> Result<Action, Error> {
    let ns = crot.namespace().unwrap_or_default();
    let mut status = crot.status.clone().unwrap_or_default();
    let finished = match status.previous_key_id {
        Some(_) => Some(converge(crot, ctx, &mut status, true).await.map(|_| ())),
        None => None,
    };
    let releases = match deletion(crot, &mut status, finished, clock::now()) {
        Ok(releases) => releases,
        Err(e) => {
            reconcile::write_status(ctx, crot, &status).await?;
            return Err(e);
        }
    };
    for release in releases {
        hand_back(crot, ctx, release).await?;
    }
    ctx.metrics
        .set_credential(["CredentialRotation", &ns, &crot.name_any()], None);
    // The vaults of a rotation by applicationId are its own series; a ServicePrincipal's are the
    // ServicePrincipal's, which forgets them when it goes.
    if crot.spec.service_principal_ref.is_none() {
        for target in &crot.spec.targets.key_vault_secrets {
            let object = ["CredentialRotation", ns.as_str(), &crot.name_any()];
            ctx.metrics
                .set_vault_expiry(object, target.vault_name(), &target.name, None);
        }
    }
    Ok(Action::await_change())
}
/// Hands one thing back, if it is still this rotation's.
async fn hand_back(
    crot: &CredentialRotation,
    ctx: &Context,
    release: Release,
) -> Result<(), Error> {
    let ns = crot.namespace().unwrap_or_default();
    match release {
        Release::OrphanSecret { name } => {
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
            if let Some(secret) = secrets.get_opt(&name).await?
                && secrets::owned_by(&secret, crot)
            {
                secrets
                    .patch_metadata(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"ownerReferences": null}})),
                    )
                    .await?;
            }
        }
        Release::Unmark { service_principal } => {
            let sps: Api<ServicePrincipal> = Api::namespaced(ctx.client.clone(), &ns);
            if let Some(sp) = sps.get_opt(&service_principal).await?
                && sp.annotations().get(ROTATED_BY_ANNOTATION) == Some(&crot.name_any())
            {
                sps.patch_metadata(
                    &service_principal,
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"metadata": {"annotations": {ROTATED_BY_ANNOTATION: null}}}),
                    ),
                )
                .await?;
            }
        }
    }
    Ok(())
}
