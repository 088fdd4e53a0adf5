//! The CredentialRotation controller: on schedule (or when spec.rotationToken changes) add a new password,
//! write it to the Secret at once, prove it signs in, publish it to the AKS clusters and restart the workloads,
//! and only then, an overlap later, remove the previous one.
//!
//! State lives in Azure, the Secret and status, never only in memory: the passwords carry the owner's name and
//! a serial in their displayName, the Secret names the key it holds, status names the previous key, when it
//! goes, and what each target holds. So a kill -9 at any step is resumed by the next reconcile: a password
//! whose text never reached the Secret is removed, and the previous one is never removed before every target
//! holds its successor. At most two of the operator's passwords exist on the application at any time.

pub mod plan;
mod targets;
pub mod wiring;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{
    api::core::v1::{Namespace, Secret},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{controller::Action, events::EventType, finalizer::Event as Finalized},
};
use serde_json::json;

use crate::controller::reconcile::{self, Failure as _};
use tracing::info;

use super::{
    Context,
    claims::{self, Claimant},
    clock, credentials, failure, naming, policy, publish, secrets, service_principal,
};
use crate::{
    api::{
        CredentialRotation, CredentialRotationStatus, SecretFormat, SecretTarget, ServicePrincipal,
        conditions::{self, Progress},
        credential_rotation::TargetStatus,
        protocol::{self, ROTATED_BY_ANNOTATION},
    },
    azure::{
        credential,
        error::{AzureError, ErrorClass},
        graph::{Application, PasswordCredential},
    },
};

pub use super::reconcile::FINALIZER;
pub use crate::api::protocol::CREDENTIAL_ROTATION_OWNER_LABEL as OWNER_LABEL;
/// How long a password may exist unpublished before it counts as left behind by a crash: far longer than
/// adding it and writing the Secret take, short enough that the next rotation is not held up for long.
const DELIVERY_GRACE: Duration = Duration::from_secs(15);

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
    /// The new secret does not sign in yet.
    #[error("{0}")]
    Verifying(String),
    /// A target has not taken the new secret yet (an AKS reset running or failed, a workload not patched).
    #[error("{message}")]
    Publishing {
        reason: &'static str,
        message: String,
    },
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
            Error::Verifying(_) => "VerifyingCredential",
            Error::Waiting { reason, .. } => reason,
            Error::Conflict(_) => "RotationConflict",
            Error::Claimed(_) => "Conflict",
            Error::AksClusterNotUsingApplication(_) => "AKSClusterNotUsingApplication",
            Error::Publishing { reason, .. } => reason,
            Error::Expiry { reason, .. } => reason,
        }
    }

    fn retry_after(&self) -> Duration {
        match self {
            Error::Azure(e) => failure::azure_retry(e),
            Error::Verifying(_) => Duration::from_secs(2),
            Error::Waiting { until, .. } => {
                plan::wake_in(Timestamp::now(), &[Some(*until)], Duration::from_secs(3600))
            }
            Error::Publishing { .. } => Duration::from_secs(5),
            Error::Expiry { cause, .. } => cause.retry_after(),
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
        !matches!(self, Error::Verifying(_) | Error::Waiting { .. })
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
            Error::Expiry { cause, .. } => cause.stalled(),
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
            Finalized::Cleanup(crot) => cleanup(&crot, &ctx).await,
        }
    })
    .await
}

/// The application whose password is rotated, and everything needed to name, render and publish it.
struct Subject {
    app: Application,
    /// Whose passwords these are (the displayName's `{ns}/{owner}`): the ServicePrincipal's, or the rotation's.
    owner: String,
    secret: SecretTarget,
    display_name: String,
    lifetime: Duration,
    sp: Option<ServicePrincipal>,
}

async fn apply(crot: &CredentialRotation, ctx: &Context) -> Result<Action, Error> {
    let mut status = crot.status.clone().unwrap_or_default();
    let result = converge(crot, ctx, &mut status, false).await;
    status.observed_generation = crot.metadata.generation;
    let ns = crot.namespace().unwrap_or_default();
    let expiry = status.expires_at.as_ref().map(|t| t.0.as_second() as f64);
    ctx.metrics
        .set_expiry("CredentialRotation", &ns, &crot.name_any(), expiry);
    match result {
        Ok(wake) => {
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
            write_status(crot, ctx, status).await?;
            Ok(Action::requeue(wake))
        }
        Err(err) => {
            // A target that refused the secret (not one still working on it) is a failed rotation.
            let refused = matches!(err.reason(), "AKSResetFailed" | "PublishFailed");
            // A failing rotation is an emergency only as the current secret runs out.
            let err = with_expiry(err, crot, &status);
            let changed = err.record(&mut status.conditions, crot.metadata.generation);
            write_status(crot, ctx, status).await?;
            if changed && refused {
                ctx.metrics.rotated("failed");
            }
            failure::announce(ctx, crot, &err, changed).await;
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
    let reason = match plan::expiry(Timestamp::now(), current, renew_before) {
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

async fn converge(
    crot: &CredentialRotation,
    ctx: &Context,
    status: &mut CredentialRotationStatus,
    finishing: bool,
) -> Result<Duration, Error> {
    let ns = crot.namespace().unwrap_or_default();
    let subject = subject(crot, ctx).await?;
    let app = &subject.app;
    // Before anything is written: a rotation whose clusters are denied or held by another rotates nothing.
    let cleared = targets::authorize_clusters(crot, ctx, &app.app_id).await?;
    let ours = credentials::ours(app, &ns, &subject.owner);
    let serial = |key: &str| {
        ours.iter()
            .find(|p| p.key_id == key)
            .and_then(|p| credentials::serial(p, &ns, &subject.owner))
    };
    let known = |key: &Option<String>| key.clone().filter(|k| serial(k).is_some());
    let schedule = plan::Schedule {
        rotate_every: crot.spec.rotate_every.as_ref().map(|d| d.as_std()),
        renew_before: crot.spec.renew_before.as_ref().map(|d| d.as_std()),
    };
    if let Some(renew) = schedule.renew_before
        && renew >= subject.lifetime
    {
        return Err(Error::Invalid(format!(
            "spec.renewBefore ({}) must be shorter than the credential lifetime ({}s), or every secret would be \
             due as soon as it is issued",
            crot.spec
                .renew_before
                .as_ref()
                .map(|d| d.to_string())
                .unwrap_or_default(),
            subject.lifetime.as_secs()
        )));
    }

    // What the Secret holds now: the published password, and its text.
    let existing = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&subject.secret.name)
        .await?;
    if let Some(secret) = &existing {
        let owned = match &subject.sp {
            Some(sp) => secrets::owned_by(secret, sp),
            None => secrets::owned_by(secret, crot),
        };
        if !owned {
            return Err(Error::SecretConflict(format!(
                "spec.targets.secret: Secret {ns}/{} exists and is not owned by this rotation (or its \
                 ServicePrincipal); it is left untouched",
                subject.secret.name
            )));
        }
    }
    let published: Option<(PasswordCredential, String)> = existing.as_ref().and_then(|s| {
        let (password, held) = credentials::delivered(s, &ours, &subject.secret, false)?;
        Some((password.clone(), held.text?))
    });

    // Bring status in line with the Secret. A rotation records its intent (previous = current) before it
    // adds a password, so a Secret that moved on to a newer password of ours after that is this rotation's
    // own work, interrupted before status was written; anything else in the Secret is adopted as it is.
    let now_ts = Timestamp::now();
    status.current_key_id = known(&status.current_key_id);
    status.previous_key_id = known(&status.previous_key_id);
    if let Some((p, _)) = &published
        && status.current_key_id.as_deref() != Some(p.key_id.as_str())
    {
        let intent =
            status.previous_key_id.is_some() && status.previous_key_id == status.current_key_id;
        let newer = match status.current_key_id.as_deref() {
            Some(c) => serial(&p.key_id) > serial(c),
            None => false,
        };
        status.current_key_id = Some(p.key_id.clone());
        status.last_rotation_time = p.start_date_time.map(Time);
        status.targets.clear();
        if !(intent && newer) {
            // The ServicePrincipal's first password, or one from before: consumers already read it, so it
            // restarts nothing, and a rotationToken present from the start is no request to rotate.
            targets::workloads_hold(crot, status, &p.key_id);
            if status.observed_rotation_token.is_none() {
                status.observed_rotation_token = crot.spec.rotation_token.clone();
            }
        }
    }
    if status.previous_key_id.is_some() && status.previous_key_id == status.current_key_id {
        // An intent whose password never reached the Secret: nothing to keep apart.
        status.previous_key_id = None;
        status.previous_key_removal_time = None;
    }
    if status.previous_key_id.is_none() {
        status.previous_key_removal_time = None;
    }

    // Passwords that are neither current nor previous: left by a crash between adding one and writing the
    // Secret, so nobody has their text. They go once old enough not to be on their way right now.
    let mut in_flight: Option<Timestamp> = None;
    for p in ours.iter().filter(|p| {
        status.current_key_id.as_deref() != Some(p.key_id.as_str())
            && status.previous_key_id.as_deref() != Some(p.key_id.as_str())
    }) {
        let grace_end = p.start_date_time.and_then(|t| {
            t.checked_add(SignedDuration::try_from(DELIVERY_GRACE).ok()?)
                .ok()
        });
        if let Some(end) = grace_end
            && end > now_ts
        {
            in_flight = Some(in_flight.map_or(end, |t| t.max(end)));
            continue;
        }
        ctx.graph.remove_password(&app.id, &p.key_id).await?;
        publish(
            ctx,
            crot,
            EventType::Normal,
            "CredentialRemoved",
            &format!("Removed password {} that no target holds", p.key_id),
        )
        .await;
    }

    // The previous password goes once its overlap has passed and every target holds its successor.
    if let Some(old) = status.previous_key_id.clone()
        && status
            .previous_key_removal_time
            .as_ref()
            .is_some_and(|t| t.0 <= now_ts)
        && all_published(crot, status, &subject.secret.name)
    {
        ctx.graph.remove_password(&app.id, &old).await?;
        info!(object = %format!("{ns}/{}", crot.name_any()), key_id = %old, "removed the previous password");
        publish(
            ctx,
            crot,
            EventType::Normal,
            "PreviousCredentialRemoved",
            &format!("Removed the previous password {old} after the overlap"),
        )
        .await;
        status.previous_key_id = None;
        status.previous_key_removal_time = None;
    }

    // Rotate when due (a lost Secret is due at once): at most two of the operator's passwords at any time.
    let current = published.as_ref().map(|(p, _)| plan::Current {
        issued: status
            .last_rotation_time
            .as_ref()
            .map(|t| t.0)
            .or(p.start_date_time)
            .unwrap_or(now_ts),
        expires: p.end_date_time,
    });
    let token_changed = crot.spec.rotation_token.is_some()
        && crot.spec.rotation_token != status.observed_rotation_token;
    let mut published = published;
    if let Some(trigger) = plan::due(now_ts, schedule, current, token_changed)
        && !finishing
    {
        if let Some(until) = status
            .previous_key_removal_time
            .as_ref()
            .map(|t| t.0)
            .filter(|_| status.previous_key_id.is_some())
            .or(in_flight)
        {
            return Err(Error::Waiting {
                reason: "WaitingForOverlap",
                message: format!(
                    "a {} rotation is due; it starts when the previous secret's overlap ends",
                    trigger.as_str()
                ),
                until,
            });
        }
        if status.previous_key_id.is_none() {
            published = Some(rotate(crot, ctx, &subject, &ours, trigger, status).await?);
        }
    }
    let Some((current, text)) = published else {
        return Err(Error::Waiting {
            reason: "WaitingForPublication",
            message: format!(
                "Secret {} holds no password of this rotation yet; waiting for the previous one's overlap",
                subject.secret.name
            ),
            until: now_ts
                .checked_add(SignedDuration::from_secs(5))
                .unwrap_or(now_ts),
        });
    };
    status.expires_at = current.end_date_time.map(Time);
    status.next_rotation_time = plan::next_rotation(
        schedule,
        plan::Current {
            issued: status
                .last_rotation_time
                .as_ref()
                .map(|t| t.0)
                .unwrap_or(now_ts),
            expires: current.end_date_time,
        },
    )
    .map(Time);

    // Publish: prove it signs in, then each target; the previous one's overlap starts when all hold it.
    let was_published = all_published(crot, status, &subject.secret.name);
    targets::publish_all(
        crot,
        ctx,
        &cleared,
        &subject.secret.name,
        &subject.app.app_id,
        &current.key_id,
        &text,
        status,
    )
    .await?;
    if !was_published {
        ctx.metrics.rotated("completed");
    }
    if status.previous_key_id.is_some() && status.previous_key_removal_time.is_none() {
        let until = now_ts
            .checked_add(SignedDuration::try_from(crot.spec.overlap.as_std()).unwrap_or_default())
            .unwrap_or(Timestamp::MAX);
        status.previous_key_removal_time = Some(Time(until));
    }
    Ok(plan::wake_in(
        Timestamp::now(),
        &[
            status.next_rotation_time.as_ref().map(|t| t.0),
            status.previous_key_removal_time.as_ref().map(|t| t.0),
        ],
        ctx.resync,
    ))
}

/// Whether every target the spec names holds the current key (the Secret and the sign-in check included).
fn all_published(
    crot: &CredentialRotation,
    status: &CredentialRotationStatus,
    secret: &str,
) -> bool {
    let Some(key) = status.current_key_id.as_deref() else {
        return false;
    };
    let holds = |kind: &str, name: &str| {
        status.targets.iter().any(|t| {
            t.kind == kind
                && t.name.eq_ignore_ascii_case(name)
                && t.key_id.as_deref() == Some(key)
                && t.state == targets::PUBLISHED
        })
    };
    let spec = &crot.spec.targets;
    holds("Secret", secret)
        && holds("SignIn", "entra")
        && spec.aks_clusters.iter().all(|c| holds("AKSCluster", c))
        && spec
            .restart_workloads
            .iter()
            .all(|w| holds(targets::kind_name(w.kind), &w.name))
}

/// Adds the next password and writes it to the Secret at once: its text exists nowhere else. The intent
/// (the current password becomes the previous one) is in status before the password exists.
async fn rotate(
    crot: &CredentialRotation,
    ctx: &Context,
    subject: &Subject,
    ours: &[&PasswordCredential],
    trigger: plan::Trigger,
    status: &mut CredentialRotationStatus,
) -> Result<(PasswordCredential, String), Error> {
    let ns = crot.namespace().unwrap_or_default();
    let delivery = credentials::Delivery {
        target: &subject.secret,
        client_id: &subject.app.app_id,
        tenant_id: &ctx.tenant_id,
        display_name: &subject.display_name,
        cloud: &ctx.cloud,
    };
    let render = |secret: &str| delivery.render(secret).map_err(Error::Invalid);
    // A template that does not render fails before a password exists, not after.
    render("placeholder")?;
    if status.current_key_id.is_some() {
        status.previous_key_id = status.current_key_id.clone();
        status.previous_key_removal_time = None;
        write_status(crot, ctx, status.clone()).await?;
    }
    let serial = credentials::next_serial(ours, &ns, &subject.owner);
    let end = credentials::expiry(Timestamp::now(), subject.lifetime);
    let new = ctx
        .graph
        .add_password(
            &subject.app.id,
            &naming::password_name(&ns, &subject.owner, serial),
            end,
        )
        .await?;
    let text = new.secret_text.secret().to_string();
    let data = render(&text)?;
    match &subject.sp {
        Some(sp) => {
            let owner = secrets::Owner {
                object: sp,
                label: service_principal::OWNER_LABEL,
            };
            secrets::write(
                &ctx.client,
                &owner,
                &subject.secret,
                &new.credential.key_id,
                data,
            )
            .await?
        }
        None => {
            let owner = secrets::Owner {
                object: crot,
                label: OWNER_LABEL,
            };
            secrets::write(
                &ctx.client,
                &owner,
                &subject.secret,
                &new.credential.key_id,
                data,
            )
            .await?
        }
    }
    info!(object = %format!("{ns}/{}", crot.name_any()), key_id = %new.credential.key_id, trigger = trigger.as_str(), "rotated the client secret");
    ctx.metrics.rotated("issued");
    status.current_key_id = Some(new.credential.key_id.clone());
    status.last_rotation_time = Some(Time(Timestamp::now()));
    status.observed_rotation_token = crot.spec.rotation_token.clone();
    status.targets.clear();
    publish(
        ctx,
        crot,
        EventType::Normal,
        "CredentialRotated",
        &format!(
            "Issued password {} ({} rotation) into Secret {}",
            new.credential.key_id,
            trigger.as_str(),
            subject.secret.name
        ),
    )
    .await;
    Ok((new.credential, text))
}

/// Finds the application and where its secret goes; checks what the spec may do.
async fn subject(crot: &CredentialRotation, ctx: &Context) -> Result<Subject, Error> {
    let ns = crot.namespace().unwrap_or_default();
    let spec_lifetime = crot.spec.credential_lifetime.as_ref().map(|d| d.as_std());
    if let Some(reference) = &crot.spec.service_principal_ref {
        let sps: Api<ServicePrincipal> = Api::namespaced(ctx.client.clone(), &ns);
        let Some(sp) = sps.get_opt(&reference.name).await? else {
            return Err(Error::ServicePrincipalNotFound(format!(
                "spec.servicePrincipalRef.name: ServicePrincipal {} does not exist in namespace {ns}",
                reference.name
            )));
        };
        let Some(secret) = sp.spec.secret.clone() else {
            return Err(Error::Invalid(format!(
                "spec.servicePrincipalRef.name: ServicePrincipal {} has no spec.secret to rotate",
                reference.name
            )));
        };
        if let Some(target) = &crot.spec.targets.secret
            && target.name != secret.name
        {
            return Err(Error::Invalid(format!(
                "spec.targets.secret: with servicePrincipalRef the ServicePrincipal's Secret ({}) is the one \
                 rotated; leave targets.secret unset",
                secret.name
            )));
        }
        // One rotation per ServicePrincipal: two would each take the other's passwords for leftovers.
        if let Some(other) = sp.annotations().get(ROTATED_BY_ANNOTATION)
            && *other != crot.name_any()
            && Api::<CredentialRotation>::namespaced(ctx.client.clone(), &ns)
                .get_opt(other)
                .await?
                .is_some_and(|c| c.metadata.deletion_timestamp.is_none())
        {
            return Err(Error::Conflict(format!(
                "spec.servicePrincipalRef.name: CredentialRotation {other} already rotates ServicePrincipal {}",
                reference.name
            )));
        }
        // From now on the ServicePrincipal leaves its passwords to this rotation.
        if sp.annotations().get(ROTATED_BY_ANNOTATION) != Some(&crot.name_any()) {
            sps.patch_metadata(
                &reference.name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {ROTATED_BY_ANNOTATION: crot.name_any()}}}),
                ),
            )
            .await?;
        }
        // Ready, or waiting for this very rotation (its Secret lost or edited, which only the rotation may
        // re-issue): waiting on each other would leave the Secret missing for good.
        let ready = sp.status.as_ref().is_some_and(|s| {
            conditions::is_true(&s.conditions, conditions::READY)
                || (s.app_id.is_some()
                    && s.conditions.iter().any(|c| {
                        c.type_ == conditions::READY && c.reason == protocol::WAITING_FOR_ROTATION
                    }))
        });
        let Some(app_id) = sp
            .status
            .as_ref()
            .and_then(|s| s.app_id.clone())
            .filter(|_| ready)
        else {
            return Err(Error::WaitingForServicePrincipal(format!(
                "spec.servicePrincipalRef.name: waiting for ServicePrincipal {} to be Ready",
                reference.name
            )));
        };
        let app = ctx
            .graph
            .application_by_app_id(&app_id)
            .await?
            .ok_or_else(|| {
                Error::WaitingForServicePrincipal(format!(
                    "application {app_id} is not visible yet"
                ))
            })?;
        return Ok(Subject {
            app,
            owner: reference.name.clone(),
            secret,
            display_name: sp.spec.display_name.clone(),
            lifetime: spec_lifetime
                .or(sp.spec.credential_lifetime.as_ref().map(|d| d.as_std()))
                .unwrap_or(credentials::DEFAULT_LIFETIME),
            sp: Some(sp),
        });
    }
    let app_id = crot.spec.application_id.as_deref().ok_or_else(|| {
        Error::Invalid("spec: one of servicePrincipalRef and applicationId must be set".into())
    })?;
    let labels = Api::<Namespace>::all(ctx.client.clone())
        .get(&ns)
        .await?
        .metadata
        .labels
        .unwrap_or_default();
    policy::may_rotate(&ctx.policies.state(), &ns, &labels, app_id)
        .map_err(Error::DeniedByPolicy)?;
    claim_application(crot, ctx, app_id).await?;
    let app = match ctx.graph.application_by_app_id(app_id).await {
        Ok(Some(app)) => app,
        Ok(None) => {
            return Err(Error::ApplicationNotFound(format!(
                "spec.applicationId: no application {app_id} exists in the tenant"
            )));
        }
        Err(e) if e.class() == ErrorClass::Forbidden => {
            return Err(Error::ApplicationNotOwned(format!(
                "spec.applicationId: the operator's identity does not own application {app_id} ({}); add it as \
                 an owner to let the operator rotate its secret",
                e.code()
            )));
        }
        Err(e) => return Err(e.into()),
    };
    // Another cluster's operator manages it: rotating here would cut that cluster's consumers off.
    if let Some(other) = naming::ownership_marks(&app.tags).other_cluster(&ctx.cluster_id) {
        return Err(Error::Claimed(format!(
            "spec.applicationId: application {app_id} belongs to the entra-operator of another cluster (its tag \
             entra-operator/cluster={other}); it is left to that cluster"
        )));
    }
    let secret = crot.spec.targets.secret.clone().unwrap_or(SecretTarget {
        name: format!("{}-credential", crot.name_any()),
        format: SecretFormat::Env,
        templates: None,
    });
    Ok(Subject {
        display_name: app.display_name.clone(),
        app,
        owner: crot.name_any(),
        secret,
        lifetime: spec_lifetime.unwrap_or(credentials::DEFAULT_LIFETIME),
        sp: None,
    })
}

/// An application rotated by id is held by one object: a ServicePrincipal of this cluster that created or
/// adopted it (whose rotation goes through servicePrincipalRef, in its namespace), else the oldest
/// CredentialRotation naming it. Decided from the stores, so every reconcile of every claimant agrees. An
/// object that names an application its namespace may not take holds nothing: naming it first blocks no one.
async fn claim_application(
    crot: &CredentialRotation,
    ctx: &Context,
    app_id: &str,
) -> Result<(), Error> {
    let same = |id: Option<&str>| id.is_some_and(|id| id.eq_ignore_ascii_case(app_id));
    let policies = ctx.policies.state();
    let mut labels_of = BTreeMap::new();
    let mut holders = vec![];
    for sp in ctx.claims.service_principals().iter() {
        let has = same(sp.status.as_ref().and_then(|s| s.app_id.as_deref()));
        let adopts = same(sp.spec.adopt.as_ref().map(|a| a.app_id.as_str()));
        if !has && !adopts {
            continue;
        }
        let claimant = Claimant::of(sp.as_ref());
        // status.appId is set only for an application it created or was allowed to adopt; spec.adopt counts
        // where a policy lists the application for its namespace.
        if !has {
            let labels =
                targets::namespace_labels(ctx, &mut labels_of, &claimant.namespace).await?;
            if policy::may_rotate(&policies, &claimant.namespace, &labels, app_id).is_err() {
                continue;
            }
        }
        holders.push(claimant);
    }
    // The oldest, so that the message does not change from one reconcile to the next.
    if let Some(sp) =
        holders
            .into_iter()
            .reduce(|a, b| match claims::check(&a, std::slice::from_ref(&b)) {
                Ok(()) => a,
                Err(_) => b,
            })
    {
        return Err(Error::Claimed(format!(
            "spec.applicationId: application {app_id} belongs to {sp}; rotate its secret with a CredentialRotation \
             in namespace {} whose servicePrincipalRef names {} instead",
            sp.namespace, sp.name
        )));
    }
    let me = Claimant::of(crot);
    let mut claimants = vec![];
    for other in ctx.claims.rotations().iter() {
        let claimant = Claimant::of(other.as_ref());
        if !same(other.spec.application_id.as_deref())
            || (claimant.namespace == me.namespace && claimant.name == me.name)
        {
            continue;
        }
        let labels = targets::namespace_labels(ctx, &mut labels_of, &claimant.namespace).await?;
        if policy::may_rotate(&policies, &claimant.namespace, &labels, app_id).is_ok() {
            claimants.push(claimant);
        }
    }
    claims::check(&me, &claimants).map_err(|holder| {
        Error::Claimed(format!(
            "spec.applicationId: application {app_id} is rotated by {holder}, the oldest rotation naming it; this rotation \
             changes nothing until {holder} is deleted"
        ))
    })
}

/// On delete: a rotation in progress is finished first (the previous password goes only when its overlap is
/// over and every target holds its successor); then the credentials in use stay, the rotation's own Secret
/// included, and the ServicePrincipal takes its passwords back.
async fn cleanup(crot: &CredentialRotation, ctx: &Context) -> Result<Action, Error> {
    let ns = crot.namespace().unwrap_or_default();
    let mut status = crot.status.clone().unwrap_or_default();
    if status.previous_key_id.is_some() {
        match converge(crot, ctx, &mut status, true).await {
            // Nothing left to finish where the application or the right to touch it is gone.
            Err(
                Error::ServicePrincipalNotFound(_)
                | Error::ApplicationNotFound(_)
                | Error::ApplicationNotOwned(_)
                | Error::DeniedByPolicy(_)
                | Error::Claimed(_)
                | Error::AksClusterNotUsingApplication(_),
            ) => status.previous_key_id = None,
            Err(e) => {
                write_status(crot, ctx, status).await?;
                return Err(e);
            }
            Ok(_) => {}
        }
        if let Some(previous) = status.previous_key_id.clone() {
            let until = status
                .previous_key_removal_time
                .as_ref()
                .map(|t| t.0)
                .unwrap_or_else(|| Timestamp::now() + SignedDuration::from_secs(5));
            write_status(crot, ctx, status).await?;
            return Err(Error::Waiting {
                reason: "FinishingRotation",
                message: format!(
                    "deletion waits for the previous password {previous} to go once every target holds its successor"
                ),
                until,
            });
        }
    }
    if crot.spec.application_id.is_some() {
        let name = crot
            .spec
            .targets
            .secret
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_else(|| format!("{}-credential", crot.name_any()));
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        if let Some(secret) = secrets.get_opt(&name).await?
            && secrets::owned_by(&secret, crot)
        {
            // Orphaned rather than collected with the rotation: something may still read it.
            secrets
                .patch_metadata(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"ownerReferences": null}})),
                )
                .await?;
        }
    }
    if let Some(reference) = &crot.spec.service_principal_ref {
        let sps: Api<ServicePrincipal> = Api::namespaced(ctx.client.clone(), &ns);
        if let Some(sp) = sps.get_opt(&reference.name).await?
            && sp.annotations().get(ROTATED_BY_ANNOTATION) == Some(&crot.name_any())
        {
            sps.patch_metadata(
                &reference.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {ROTATED_BY_ANNOTATION: null}}})),
            )
            .await?;
        }
    }
    ctx.metrics
        .set_expiry("CredentialRotation", &ns, &crot.name_any(), None);
    Ok(Action::await_change())
}

async fn write_status(
    crot: &CredentialRotation,
    ctx: &Context,
    status: CredentialRotationStatus,
) -> Result<(), Error> {
    // Fields that a change can clear are sent as null, so that the merge patch removes them.
    reconcile::patch_status(
        ctx,
        crot,
        crot.status.as_ref(),
        &status,
        &["previousKeyId", "previousKeyRemovalTime", "targets"],
    )
    .await?;
    Ok(())
}

/// A target's entry, updated in place (or added).
fn set_target(status: &mut CredentialRotationStatus, entry: TargetStatus) {
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

/// Verifies a new secret, with the operator's HTTP client and cloud.
async fn signs_in(ctx: &Context, client_id: &str, secret: &str) -> Result<(), String> {
    credential::client_secret_signs_in(&ctx.cloud, &ctx.http, &ctx.tenant_id, client_id, secret)
        .await
}
