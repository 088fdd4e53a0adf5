//! The ServicePrincipal controller: converge the application, its service principal, federated credentials and
//! one delivered password; write the Secret; report status; clean up on delete.
//!
//! State lives in Azure and in the Secret, not in memory: the application is found by its derived uniqueName,
//! the operator's passwords by their displayName, the delivered one by the Secret's key-id annotation. So a
//! crash between any two steps is repaired by the next reconcile: a password whose text was never delivered is
//! removed, never leaked.
//!
//! A reconcile reads top to bottom: the shortcut (`plan::shortcut`, then `plan::unchanged` on the one Secret it
//! reads), the application (`application`: created, or adopted once authorized and claimed), then `gather`
//! reads the rest into one struct, `plan` decides from it alone (`federated`, `password`), and `act` carries
//! the plan out. Deletion follows the same shape in `cleanup`.

mod act;
mod application;
mod cleanup;
mod federated;
mod gather;
mod password;
mod plan;
pub mod wiring;

use std::{sync::Arc, time::Duration};

use kube::{
    ResourceExt,
    runtime::{controller::Action, finalizer::Event as Finalized, reflector::ObjectRef},
};

use crate::controller::reconcile;

use super::{Context, clock, drift, failure};
use crate::{
    api::{ServicePrincipal, ServicePrincipalStatus, protocol},
    azure::error::AzureError,
};

pub use super::reconcile::FINALIZER;
pub use super::secrets::{FORMAT_ANNOTATION, KEY_ID_ANNOTATION, TEMPLATES_ANNOTATION};
pub use crate::api::protocol::{
    ROTATED_BY_ANNOTATION, SERVICE_PRINCIPAL_OWNER_LABEL as OWNER_LABEL,
};
pub use gather::source as certificate_source;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Azure(#[from] AzureError),
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// A spec the operator cannot act on; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// The Secret exists and belongs to something else.
    #[error("Secret {0} exists and is not owned by this ServicePrincipal; it is left untouched")]
    SecretConflict(String),
    /// spec.adopt names an application the operator may not (or cannot) manage.
    #[error("{0}")]
    Adoption(String),
    /// Azure has not shown the object yet (replication right after a create); the id of an application
    /// just created, if known, so that status records something to delete by.
    #[error("{0} is not visible yet (replication delay)")]
    NotYetVisible(&'static str, Option<String>),
    /// A CredentialRotation delivers this object's password.
    #[error("{0}")]
    ManagedByRotation(String),
    /// The TLS Secret spec.certificate.secretRef names does not exist yet (cert-manager has not issued it).
    #[error("{0}")]
    WaitingForCertificate(String),
    /// Nothing authorizes adopting the application (see `policy::applications::may_adopt`); the message names
    /// spec.adopt.appId and the policy field.
    #[error("{0}")]
    DeniedByPolicy(String),
    /// Another object (or cluster, or someone outside the operator) holds what this one claims: the
    /// application, or a federated credential's name on it. The message names the holder.
    #[error("{0}")]
    Conflict(String),
}

impl reconcile::Failure for Error {
    /// The condition reason this failure shows as.
    fn reason(&self) -> &'static str {
        match self {
            Error::Azure(e) => failure::azure_reason(e, &failure::APPLICATIONS),
            Error::Kube(_) => "KubernetesError",
            Error::Invalid(_) => "InvalidSpec",
            Error::SecretConflict(_) => "SecretConflict",
            Error::Adoption(_) => "AdoptionDenied",
            Error::NotYetVisible(..) => protocol::WAITING_FOR_REPLICATION,
            Error::ManagedByRotation(_) => protocol::WAITING_FOR_ROTATION,
            Error::WaitingForCertificate(_) => "WaitingForCertificate",
            Error::DeniedByPolicy(_) => "DeniedByPolicy",
            Error::Conflict(_) => "Conflict",
        }
    }

    /// How long until the next try.
    fn retry_after(&self) -> Duration {
        match self {
            Error::Azure(e) => failure::azure_retry(e),
            Error::Invalid(_) | Error::SecretConflict(_) | Error::Adoption(_) => {
                Duration::from_secs(300)
            }
            Error::NotYetVisible(..) => Duration::from_secs(2),
            Error::Kube(_) => Duration::from_secs(5),
            // The rotation's Secret write brings this object back through the Secret watch.
            Error::ManagedByRotation(_) => Duration::from_secs(60),
            // The TLS Secret watch brings it back as soon as the Secret is written.
            Error::WaitingForCertificate(_) => Duration::from_secs(60),
            // Neither a policy change nor the holder's delete wakes this object: it looks again every two minutes.
            Error::DeniedByPolicy(_) | Error::Conflict(_) => Duration::from_secs(120),
        }
    }

    /// Whether only a change from outside (spec, grant, conflicting object) can help.
    fn stalled(&self) -> bool {
        match self {
            Error::Azure(e) => failure::azure_stalled(e),
            Error::Invalid(_)
            | Error::SecretConflict(_)
            | Error::Adoption(_)
            | Error::DeniedByPolicy(_)
            | Error::Conflict(_) => true,
            Error::Kube(_)
            | Error::NotYetVisible(..)
            | Error::ManagedByRotation(_)
            | Error::WaitingForCertificate(_) => false,
        }
    }
}

pub async fn reconcile(
    sp: Arc<ServicePrincipal>,
    ctx: Arc<Context>,
) -> Result<Action, kube::runtime::finalizer::Error<Error>> {
    reconcile::run("ServicePrincipal", sp, ctx, |event, ctx| async move {
        match event {
            Finalized::Apply(sp) => apply(&sp, &ctx).await,
            Finalized::Cleanup(sp) => cleanup::cleanup(&sp, &ctx).await,
        }
    })
    .await
}

/// Converges one object, recording a failure in its conditions before returning it.
async fn apply(sp: &ServicePrincipal, ctx: &Context) -> Result<Action, Error> {
    let mut recorded_credentials = None;
    match converge(sp, ctx, &mut recorded_credentials).await {
        Ok((status, verifying_until)) => {
            let seconds = |t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
                t.map(|t| t.0.as_second() as f64)
            };
            let credential = status.credential.as_ref();
            let expiry = seconds(credential.and_then(|c| c.end_date_time.as_ref()));
            let ns = sp.namespace().unwrap_or_default();
            let times = crate::telemetry::metrics::CredentialTimes {
                not_before: seconds(credential.and_then(|c| c.start_date_time.as_ref())),
                expiry,
                renewal: None,
                // Ready, unless the credential is still being verified.
                ready: verifying_until.is_none(),
            };
            let object = ["ServicePrincipal", ns.as_str(), &sp.name_any()];
            ctx.metrics.set_credential(object, Some(times));
            for held in &status.key_vault_secrets {
                // What the target holds is the delivered password: its version's exp is that password's end.
                let held_expiry = expiry.filter(|_| held.key_id.is_some());
                let (vault, name) = (vault_name(&held.vault), &held.name);
                let object = ["ServicePrincipal", ns.as_str(), &sp.name_any()];
                ctx.metrics
                    .set_vault_expiry(object, vault, name, held_expiry);
            }
            reconcile::write_status(ctx, sp, &status).await?;
            // Changes in Azure (an application deleted, a password removed) are found at the next resync; a
            // credential being verified is looked at again when its next round is due.
            let wake = verifying_until.map(|until| {
                crate::controller::credential_rotation::plan::wake_in(
                    clock::now(),
                    &[Some(until)],
                    ctx.resync,
                )
            });
            Ok(Action::requeue(wake.unwrap_or(ctx.resync)))
        }
        Err(err) => {
            let mut status = sp.status.clone().unwrap_or_default();
            if let Error::NotYetVisible(_, Some(id)) = &err {
                // Recorded before the application can be read: a delete in the meantime still finds it.
                status.object_id = Some(id.clone());
            }
            if let Some(names) = recorded_credentials {
                // Written before they were created; a failure after must not forget them.
                status.federated_credentials = names;
            }
            failure::report(ctx, sp, status, &err).await?;
            Err(err)
        }
    }
}

/// Gather, plan, act. The shortcut comes first: when the drift feeds vouch for the application and service
/// principal, only the Secret is read. `recorded_credentials`: set when federated credential names were
/// written to status ahead of their creation.
async fn converge(
    sp: &ServicePrincipal,
    ctx: &Context,
    recorded_credentials: &mut Option<Vec<String>>,
) -> Result<(ServicePrincipalStatus, Option<k8s_openapi::jiff::Timestamp>), Error> {
    let setting = plan::Setting::of(ctx);
    if let Some(shortcut) = plan::shortcut(sp)
        && ctx.drift.fresh(drift::Source::Graph, &shortcut.vouched)
    {
        let secret = gather::secret(sp, ctx, shortcut.secret.map(|(target, _)| target)).await?;
        if plan::unchanged(sp, &shortcut, secret.as_ref(), &setting)?
            && plan::source_unchanged(&shortcut, gather::source(sp, ctx).await?.as_ref())
            && (sp.spec.key_vault_secrets.is_empty()
                || plan::vaults_unchanged(
                    sp,
                    &shortcut,
                    &ctx.cluster_id,
                    &gather::vaults(sp, ctx).await?,
                ))
        {
            return Ok((shortcut.status.clone(), None));
        }
    }
    let started = tokio::time::Instant::now();
    let tags = plan::tags(sp, &ctx.cluster_id)?;
    let found = application::ensure(sp, ctx, tags).await?;
    let gathered = gather::gather(sp, ctx, found, &setting).await?;
    // The time a new password's lifetime starts from: now, not when the reconcile began.
    let planned = plan::plan(sp, &gathered, &plan::Setting::of(ctx));
    let (status, principal, verifying) =
        act::act(sp, ctx, &gathered, planned, recorded_credentials).await?;
    ctx.drift.verified(
        &[&gathered.app.id, &principal],
        started,
        drift::Owner::ServicePrincipal(ObjectRef::from_obj(sp)),
    );
    Ok((status, verifying))
}

/// A vault's name: the last segment of its ARM id (the metrics' label).
fn vault_name(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or_default()
}

impl reconcile::Status for ServicePrincipalStatus {
    const CLEARED: &'static [&'static str] = &[
        "secretName",
        "credential",
        "federatedCredentials",
        "keyVaultSecrets",
    ];

    fn conditions_mut(
        &mut self,
    ) -> &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        &mut self.conditions
    }
}
