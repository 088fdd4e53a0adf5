//! The CredentialRotation controller: on schedule (or when spec.rotationToken changes) add a new password,
//! write it to the Secret at once, prove it signs in, publish it to the AKS clusters and restart the workloads,
//! and only then, an overlap later, remove the previous one.
//!
//! State lives in Azure, the Secret and status, never only in memory: the passwords carry the owner's name and
//! a serial in their displayName, the Secret names the key it holds, status names the previous key, when it
//! goes, and what each target holds. So a kill -9 at any step is resumed by the next reconcile: a password
//! whose text never reached the Secret is removed, and the previous one is never removed before every target
//! holds its successor. At most two of the operator's passwords exist on the application at any time.
//!
//! A reconcile reads top to bottom: `gather` reads the subject (`subject`), the clusters' clearances and the
//! Secret; `plan` decides, without I/O, the status to start from and the steps; `act` takes the steps in
//! order. Deletion (`cleanup`) finishes a rotation in progress through the same three, then hands back what
//! the rotation held.

mod act;
mod cleanup;
mod gather;
pub mod plan;
mod subject;
mod targets;
#[cfg(test)]
mod tests;
pub mod wiring;

use std::{sync::Arc, time::Duration};

use k8s_openapi::jiff::Timestamp;
use kube::{
    ResourceExt,
    runtime::{controller::Action, finalizer::Event as Finalized},
};

use crate::controller::reconcile::{self, Failure as _};
use crate::telemetry::metrics;

use super::{Context, clock, failure};
use crate::{
    api::{
        CredentialRotation, CredentialRotationStatus,
        conditions::{self, Progress},
    },
    azure::error::AzureError,
};

pub use super::reconcile::FINALIZER;
pub use crate::api::protocol::CREDENTIAL_ROTATION_OWNER_LABEL as OWNER_LABEL;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Azure(#[from] AzureError),
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    DeniedByPolicy(String),
    #[error("{0}")]
    ApplicationNotOwned(String),
    #[error("{0}")]
    ApplicationNotFound(String),
    #[error("{0}")]
    ServicePrincipalNotFound(String),
    #[error("{0}")]
    WaitingForServicePrincipal(String),
    #[error("{0}")]
    SecretConflict(String),
    /// Nothing to do until a moment: an overlap's end, a password on its way.
    #[error("{message}")]
    Waiting {
        reason: &'static str,
        message: String,
        until: Timestamp,
    },
    /// Another CredentialRotation already manages the ServicePrincipal's password.
    #[error("{0}")]
    Conflict(String),
    /// Another object holds what this rotation names (an AKS cluster, an application): reason Conflict.
    #[error("{0}")]
    Claimed(String),
    /// An AKS cluster runs as another application than the one rotated, and moving it is not asked for.
    #[error("{0}")]
    AksClusterNotUsingApplication(String),
    /// A target has not taken the new secret yet (an AKS reset running or failed, a workload not patched).
    #[error("{message}")]
    Publishing {
        reason: &'static str,
        message: String,
    },
    /// A failure that has happened `attempts` times in a row: the next try backs off exponentially.
    #[error("{cause} (failed {attempts} times in a row; the next try backs off)")]
    Repeated { cause: Box<Error>, attempts: u32 },
    /// The current secret is close to expiring, or expired, and the rotation is not getting anywhere.
    #[error("{message}")]
    Expiry {
        reason: &'static str,
        message: String,
        cause: Box<Error>,
    },
}

impl reconcile::Failure for Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::Azure(e) => failure::azure_reason(e, &failure::APPLICATIONS),
            Error::Kube(_) => "KubernetesError",
            Error::Invalid(_) => "InvalidSpec",
            Error::DeniedByPolicy(_) => "DeniedByPolicy",
            Error::ApplicationNotOwned(_) => "ApplicationNotOwned",
            Error::ApplicationNotFound(_) => "ApplicationNotFound",
            Error::ServicePrincipalNotFound(_) => "ServicePrincipalNotFound",
            Error::WaitingForServicePrincipal(_) => "WaitingForServicePrincipal",
            Error::SecretConflict(_) => "SecretConflict",
            Error::Waiting { reason, .. } => reason,
            Error::Conflict(_) => "RotationConflict",
            Error::Claimed(_) => "Conflict",
            Error::AksClusterNotUsingApplication(_) => "AKSClusterNotUsingApplication",
            Error::Publishing { reason, .. } => reason,
            Error::Expiry { reason, .. } => reason,
            Error::Repeated { cause, .. } => cause.reason(),
        }
    }

    fn retry_after(&self) -> Duration {
        match self {
            Error::Azure(e) => failure::azure_retry(e),
            Error::Waiting { until, .. } => {
                plan::wake_in(clock::now(), &[Some(*until)], Duration::from_secs(3600))
            }
            Error::Publishing { .. } => Duration::from_secs(5),
            Error::Expiry { cause, .. } => cause.retry_after(),
            Error::Repeated { cause, attempts } => backoff(cause.retry_after(), *attempts),
            Error::ServicePrincipalNotFound(_) | Error::WaitingForServicePrincipal(_) => {
                Duration::from_secs(30)
            }
            Error::Kube(_) => Duration::from_secs(5),
            // Nothing tells a claimant that the holder is gone: look again soon.
            Error::Claimed(_) => Duration::from_secs(30),
            _ => Duration::from_secs(300),
        }
    }

    /// Waiting for a sign-in to replicate or an overlap to end is not news.
    fn announced(&self) -> bool {
        match self {
            Error::Repeated { cause, .. } => cause.announced(),
            _ => !matches!(self, Error::Waiting { .. }),
        }
    }

    fn stalled(&self) -> bool {
        match self {
            Error::Azure(e) => failure::azure_stalled(e),
            Error::Invalid(_)
            | Error::DeniedByPolicy(_)
            | Error::ApplicationNotOwned(_)
            | Error::ApplicationNotFound(_)
            | Error::Conflict(_)
            | Error::Claimed(_)
            | Error::AksClusterNotUsingApplication(_)
            | Error::SecretConflict(_) => true,
            Error::Expiry { cause, .. } | Error::Repeated { cause, .. } => cause.stalled(),
            _ => false,
        }
    }
}

pub async fn reconcile(
    crot: Arc<CredentialRotation>,
    ctx: Arc<Context>,
) -> Result<Action, kube::runtime::finalizer::Error<Error>> {
    reconcile::run("CredentialRotation", crot, ctx, |event, ctx| async move {
        match event {
            Finalized::Apply(crot) => apply(&crot, &ctx).await,
            Finalized::Cleanup(crot) => cleanup::cleanup(&crot, &ctx).await,
        }
    })
    .await
}

impl Error {
    /// Whether this is a failure to count (and back off from), rather than waiting for something due.
    fn is_failure(&self) -> bool {
        match self {
            Error::Expiry { cause, .. } | Error::Repeated { cause, .. } => cause.is_failure(),
            Error::Waiting { .. } | Error::WaitingForServicePrincipal(_) => false,
            _ => true,
        }
    }
}

/// The wait after `attempts` failures in a row: the failure's own wait, doubled for each repeat, at most an
/// hour (cert-manager backs off failed issuances the same way).
pub(crate) fn backoff(base: Duration, attempts: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(16));
    base.saturating_mul(factor).min(Duration::from_secs(3600))
}

async fn apply(crot: &CredentialRotation, ctx: &Context) -> Result<Action, Error> {
    let mut status = crot.status.clone().unwrap_or_default();
    let result = converge(crot, ctx, &mut status, false).await;
    status.observed_generation = crot.metadata.generation;
    let ns = crot.namespace().unwrap_or_default();
    let seconds = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.as_ref().map(|t| t.0.as_second() as f64)
    };
    let times = metrics::CredentialTimes {
        not_before: seconds(&status.last_rotation_time),
        expiry: seconds(&status.expires_at),
        renewal: seconds(&status.next_rotation_time),
        ready: result.is_ok(),
    };
    let object = ["CredentialRotation", ns.as_str(), &crot.name_any()];
    ctx.metrics.set_credential(object, Some(times));
    match result {
        Ok(wake) => {
            status.failed_attempts = None;
            status.last_failure_time = None;
            let message = format!(
                "secret {} is published to every target",
                status.current_key_id.as_deref().unwrap_or_default()
            );
            conditions::summarize(
                &mut status.conditions,
                Progress::Ready(&message),
                crot.metadata.generation,
                clock::now_time(),
            );
            reconcile::write_status(ctx, crot, &status).await?;
            Ok(Action::requeue(wake))
        }
        Err(err) => {
            // A target that refused the secret (not one still working on it) is a failed rotation.
            let refused = matches!(err.reason(), "AKSResetFailed" | "PublishFailed");
            // A failing rotation is an emergency only as the current secret runs out.
            let err = with_expiry(err, crot, &status);
            let err = match err.is_failure() {
                true => {
                    let attempts = status.failed_attempts.unwrap_or(0).saturating_add(1);
                    status.failed_attempts = Some(attempts);
                    status.last_failure_time = Some(clock::now_time());
                    match attempts {
                        1 => err,
                        _ => Error::Repeated {
                            cause: Box::new(err),
                            attempts,
                        },
                    }
                }
                false => err,
            };
            if failure::report(ctx, crot, status, &err).await? && refused {
                ctx.metrics.rotated("failed");
            }
            Err(err)
        }
    }
}

fn with_expiry(err: Error, crot: &CredentialRotation, status: &CredentialRotationStatus) -> Error {
    let (Some(expires), Some(issued)) = (&status.expires_at, &status.last_rotation_time) else {
        return err;
    };
    let current = plan::Current {
        issued: issued.0,
        expires: Some(expires.0),
    };
    let renew_before = crot.spec.renew_before.as_ref().map(|d| d.as_std());
    let reason = match plan::expiry(clock::now(), current, renew_before) {
        plan::Expiry::Fine => return err,
        plan::Expiry::Soon => "CredentialExpiringSoon",
        plan::Expiry::Expired => "CredentialExpired",
    };
    Error::Expiry {
        reason,
        message: format!(
            "the current secret expires at {} and the rotation is failing: {err}",
            expires.0
        ),
        cause: Box::new(err),
    }
}

/// One pass of the rotation: gather, plan, act. `finishing`: the rotation is being deleted, so it finishes
/// the rotation in progress and starts none. Ok says when to look again.
async fn converge(
    crot: &CredentialRotation,
    ctx: &Context,
    status: &mut CredentialRotationStatus,
    finishing: bool,
) -> Result<Duration, Error> {
    let gathered = gather::gather(crot, ctx).await?;
    let now = clock::now();
    let plan = plan::plan(crot, status, &gathered, now, finishing)?;
    *status = plan.status;
    act::act(crot, ctx, &gathered, status, plan.steps, now).await?;
    Ok(plan::wake_in(
        clock::now(),
        &[
            status.next_rotation_time.as_ref().map(|t| t.0),
            status.previous_key_removal_time.as_ref().map(|t| t.0),
        ],
        ctx.resync,
    ))
}

impl reconcile::Status for CredentialRotationStatus {
    const CLEARED: &'static [&'static str] = &[
        "previousKeyId",
        "previousKeyRemovalTime",
        "targets",
        "failedAttempts",
        "lastFailureTime",
    ];

    fn conditions_mut(
        &mut self,
    ) -> &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        &mut self.conditions
    }
}
