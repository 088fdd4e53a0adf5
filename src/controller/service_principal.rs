//! The ServicePrincipal controller: converge the application, its service principal, federated credentials and
//! one delivered password; write the Secret; report status; clean up on delete.
//!
//! State lives in Azure and in the Secret, not in memory: the application is found by its derived uniqueName,
//! the operator's passwords by their displayName, the delivered one by the Secret's key-id annotation. So a
//! crash between any two steps is repaired by the next reconcile: a password whose text was never delivered is
//! removed, never leaked.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time};
use kube::{
    Api, ResourceExt,
    api::DeleteParams,
    runtime::{
        controller::Action, events::EventType, finalizer::Event as Finalized, reflector::ObjectRef,
    },
};
use serde_json::json;

use crate::controller::reconcile::{self, Failure as _};
use tracing::info;

use super::{Context, drift, naming, publish, secret_format, secrets};
use crate::{
    api::{
        DeletionPolicy, SecretFormat, ServicePrincipal, ServicePrincipalStatus,
        conditions::{self, Progress},
        service_principal::CredentialStatus,
    },
    azure::{
        error::{AzureError, ErrorClass},
        graph::{Application, FederatedIdentityCredential, PasswordCredential},
    },
};

pub use super::reconcile::FINALIZER;
pub use super::secrets::{FORMAT_ANNOTATION, KEY_ID_ANNOTATION, TEMPLATES_ANNOTATION};
pub const OWNER_LABEL: &str = "entra-operator.io/service-principal";
/// On a ServicePrincipal whose password a CredentialRotation manages (the value names it): this controller
/// then removes none of the object's passwords, since the previous one stays valid for the rotation's overlap
/// and a new one may be on its way into the Secret.
pub const ROTATED_BY_ANNOTATION: &str = "entra-operator.io/rotated-by";
const DEFAULT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

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
}

/// The CredentialRotation that manages this object's password, read from the API server (not the cache).
async fn rotated_by(sp: &ServicePrincipal, ctx: &Context) -> Result<Option<String>, Error> {
    if sp.spec.secret.is_none() {
        return Ok(None);
    }
    let api: Api<ServicePrincipal> =
        Api::namespaced(ctx.client.clone(), &sp.namespace().unwrap_or_default());
    Ok(api
        .get_metadata_opt(&sp.name_any())
        .await?
        .and_then(|m| m.annotations().get(ROTATED_BY_ANNOTATION).cloned()))
}

impl reconcile::Failure for Error {
    /// The condition reason this failure shows as.
    fn reason(&self) -> &'static str {
        match self {
            Error::Azure(e) => reconcile::azure_reason(e),
            Error::Kube(_) => "KubernetesError",
            Error::Invalid(_) => "InvalidSpec",
            Error::SecretConflict(_) => "SecretConflict",
            Error::Adoption(_) => "AdoptionDenied",
            Error::NotYetVisible(..) => "WaitingForReplication",
            Error::ManagedByRotation(_) => "WaitingForRotation",
        }
    }

    /// How long until the next try.
    fn retry_after(&self) -> Duration {
        match self {
            Error::Azure(e) => reconcile::azure_retry(e),
            Error::Invalid(_) | Error::SecretConflict(_) | Error::Adoption(_) => {
                Duration::from_secs(300)
            }
            Error::NotYetVisible(..) => Duration::from_secs(2),
            Error::Kube(_) => Duration::from_secs(5),
            // The rotation's Secret write brings this object back through the Secret watch.
            Error::ManagedByRotation(_) => Duration::from_secs(60),
        }
    }
}

impl Error {
    /// Whether only a change from outside (spec, grant, conflicting object) can help.
    fn stalled(&self) -> bool {
        match self {
            Error::Azure(e) => reconcile::azure_stalled(e),
            Error::Invalid(_) | Error::SecretConflict(_) | Error::Adoption(_) => true,
            Error::Kube(_) | Error::NotYetVisible(..) | Error::ManagedByRotation(_) => false,
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
            Finalized::Cleanup(sp) => cleanup(&sp, &ctx).await,
        }
    })
    .await
}

/// Converges one object, recording a failure in its conditions before returning it.
async fn apply(sp: &ServicePrincipal, ctx: &Context) -> Result<Action, Error> {
    match converge(sp, ctx).await {
        Ok(status) => {
            let expiry = status
                .credential
                .as_ref()
                .and_then(|c| c.end_date_time.as_ref())
                .map(|t| t.0.as_second() as f64);
            ctx.metrics.set_expiry(
                "ServicePrincipal",
                &sp.namespace().unwrap_or_default(),
                &sp.name_any(),
                expiry,
            );
            write_status(sp, ctx, status).await?;
            // Changes in Azure (an application deleted, a password removed) are found at the next resync.
            Ok(Action::requeue(ctx.resync))
        }
        Err(err) => {
            let mut status = sp.status.clone().unwrap_or_default();
            if let Error::NotYetVisible(_, Some(id)) = &err {
                // Recorded before the application can be read: a delete in the meantime still finds it.
                status.object_id = Some(id.clone());
            }
            let message = err.to_string();
            let changed = conditions::record_failure(
                &mut status.conditions,
                err.reason(),
                &message,
                err.stalled(),
                sp.metadata.generation,
                now(),
            );
            write_status(sp, ctx, status).await?;
            if changed {
                publish(ctx, sp, EventType::Warning, err.reason(), &message).await;
            }
            Err(err)
        }
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn owned_by(secret: &Secret, sp: &ServicePrincipal) -> bool {
    secrets::owned_by(secret, sp)
}

/// The status as it stands when there is nothing to do: the spec observed, Ready, Azure unchanged since a
/// full reconcile confirmed it (the drift feeds vouch for the application and service principal), and the
/// Secret still holding the delivered password as the spec renders it. None sends the reconcile through the
/// full path, which reads Azure.
async fn unchanged(
    sp: &ServicePrincipal,
    ctx: &Context,
) -> Result<Option<ServicePrincipalStatus>, Error> {
    let Some(status) = &sp.status else {
        return Ok(None);
    };
    let (Some(app_id), Some(object_id), Some(principal_id)) = (
        status.app_id.as_deref(),
        status.object_id.as_deref(),
        status.service_principal_id.as_deref(),
    ) else {
        return Ok(None);
    };
    if status.observed_generation != sp.metadata.generation
        || !conditions::is_true(&status.conditions, conditions::READY)
        || !ctx
            .drift
            .fresh(drift::Source::Graph, &[object_id, principal_id])
    {
        return Ok(None);
    }
    match (&sp.spec.secret, &status.credential) {
        (None, None) => {}
        (Some(target), Some(credential)) if status.secret_name.as_ref() == Some(&target.name) => {
            let secrets: Api<Secret> =
                Api::namespaced(ctx.client.clone(), &sp.namespace().unwrap_or_default());
            let Some(secret) = secrets.get_opt(&target.name).await? else {
                return Ok(None);
            };
            if !owned_by(&secret, sp)
                || secret.annotations().get(KEY_ID_ANNOTATION) != Some(&credential.key_id)
            {
                return Ok(None);
            }
            match held(&secret, target, credential.hint.as_deref()) {
                Some(Held { text: None, .. }) => {}
                Some(Held {
                    text: Some(text),
                    format,
                    data,
                }) if format == target.format
                    && renders_as(sp, ctx, app_id, target, &text, &data)? => {}
                _ => return Ok(None),
            }
        }
        _ => return Ok(None),
    }
    Ok(Some(status.clone()))
}

async fn converge(sp: &ServicePrincipal, ctx: &Context) -> Result<ServicePrincipalStatus, Error> {
    if let Some(status) = unchanged(sp, ctx).await? {
        return Ok(status);
    }
    let started = tokio::time::Instant::now();
    let ns = sp.namespace().unwrap_or_default();
    let name = sp.name_any();
    let uid = sp.uid().unwrap_or_default();
    let key = naming::unique_name(&ctx.cluster_id, &ns, &name, &uid);
    let mut tags = naming::ownership_tags(&ctx.cluster_id, &ns, &name);
    tags.extend(sp.spec.tags.iter().cloned());
    let fields = json!({"displayName": sp.spec.display_name, "notes": sp.spec.notes, "tags": tags});

    // Application: read first, write only when something differs (no redundant writes to Graph).
    let app = match &sp.spec.adopt {
        Some(adopt) => adopted_application(ctx, &adopt.app_id, &fields, sp, &tags).await?,
        None => created_application(ctx, sp, &key, &fields, &tags).await?,
    };

    let principal = match ctx.graph.service_principal_by_app_id(&app.app_id).await? {
        Some(p) => p,
        None => {
            let (_, p) = ctx.graph.upsert_service_principal(&app.app_id).await?;
            publish(
                ctx,
                sp,
                EventType::Normal,
                "ServicePrincipalCreated",
                &format!("Created service principal {}", p.id),
            )
            .await;
            p
        }
    };

    let fic_names = converge_federated_credentials(sp, ctx, &app).await?;

    let mut status = sp.status.clone().unwrap_or_default();
    status.app_id = Some(app.app_id.clone());
    status.object_id = Some(app.id.clone());
    status.service_principal_id = Some(principal.id.clone());
    status.tenant_id = Some(ctx.tenant_id.clone());
    status.federated_credentials = fic_names;
    status.observed_generation = sp.metadata.generation;

    match &sp.spec.secret {
        Some(target) => {
            let delivered = converge_password(sp, ctx, &app, target).await?;
            status.secret_name = Some(target.name.clone());
            status.credential = Some(CredentialStatus {
                key_id: delivered.key_id.clone(),
                hint: delivered.hint.clone(),
                display_name: delivered.display_name.clone(),
                start_date_time: delivered.start_date_time.map(Time),
                end_date_time: delivered.end_date_time.map(Time),
            });
        }
        None => {
            // No Secret asked for: no password either; remove any the operator issued before.
            for p in ours(&app, &ns, &name) {
                ctx.graph.remove_password(&app.id, &p.key_id).await?;
            }
            status.secret_name = None;
            status.credential = None;
        }
    }
    let message = format!("application {} is ready", app.app_id);
    conditions::summarize(
        &mut status.conditions,
        Progress::Ready(&message),
        sp.metadata.generation,
        now(),
    );
    ctx.drift.verified(
        &[&app.id, &principal.id],
        started,
        drift::Owner::ServicePrincipal(ObjectRef::from_obj(sp)),
    );
    Ok(status)
}

/// The application this object created (found by its uniqueName), created or updated as the spec says.
async fn created_application(
    ctx: &Context,
    sp: &ServicePrincipal,
    key: &str,
    fields: &serde_json::Value,
    tags: &[String],
) -> Result<Application, Error> {
    let (ns, name) = (sp.namespace().unwrap_or_default(), sp.name_any());
    Ok(match ctx.graph.application_by_unique_name(key).await? {
        Some(app) if app_matches(&app, &sp.spec.display_name, sp.spec.notes.as_deref(), tags) => {
            app
        }
        found => {
            let (_, created_id) = ctx.graph.upsert_application_id(key, fields).await?;
            if found.is_none() {
                info!(object = %format!("{ns}/{name}"), unique_name = %key, "created application");
                publish(
                    ctx,
                    sp,
                    EventType::Normal,
                    "ApplicationCreated",
                    &format!("Created application {key}"),
                )
                .await;
            }
            ctx.graph
                .application_by_unique_name(key)
                .await?
                .ok_or(Error::NotYetVisible("the application", created_id))?
        }
    })
}

/// An existing application named by spec.adopt: only one the operator's identity owns (Graph refuses the
/// others), updated in place, never renamed by uniqueName.
async fn adopted_application(
    ctx: &Context,
    app_id: &str,
    fields: &serde_json::Value,
    sp: &ServicePrincipal,
    tags: &[String],
) -> Result<Application, Error> {
    let app = match ctx.graph.application_by_app_id(app_id).await {
        Ok(Some(app)) => app,
        Ok(None) => {
            return Err(Error::Adoption(format!(
                "spec.adopt.appId: no application {app_id} exists"
            )));
        }
        Err(e) if e.class() == ErrorClass::Forbidden => {
            return Err(Error::Adoption(format!(
                "spec.adopt.appId: the operator's identity does not own application {app_id} ({})",
                e.code()
            )));
        }
        Err(e) => return Err(e.into()),
    };
    if app_matches(&app, &sp.spec.display_name, sp.spec.notes.as_deref(), tags) {
        return Ok(app);
    }
    ctx.graph.update_application(&app.id, fields).await?;
    ctx.graph
        .application_by_app_id(app_id)
        .await?
        .ok_or(Error::NotYetVisible("the adopted application", None))
}

fn app_matches(
    app: &Application,
    display_name: &str,
    notes: Option<&str>,
    tags: &[String],
) -> bool {
    let mut have = app.tags.clone();
    let mut want = tags.to_vec();
    have.sort();
    want.sort();
    app.display_name == display_name && app.notes.as_deref() == notes && have == want
}

/// The passwords this object issued, oldest first.
pub(crate) fn ours<'a>(app: &'a Application, ns: &str, name: &str) -> Vec<&'a PasswordCredential> {
    let mut found: Vec<(u64, &PasswordCredential)> = app
        .password_credentials
        .iter()
        .filter_map(|p| {
            p.display_name
                .as_deref()
                .and_then(|d| naming::password_serial(d, ns, name))
                .map(|s| (s, p))
        })
        .collect();
    found.sort_by_key(|(serial, _)| *serial);
    found.into_iter().map(|(_, p)| p).collect()
}

/// Makes the application's federated credentials the spec's; returns their names. On an application the
/// operator created every other credential goes; on an adopted one only those it added before (listed in
/// status), so that credentials someone else put there survive.
async fn converge_federated_credentials(
    sp: &ServicePrincipal,
    ctx: &Context,
    app: &Application,
) -> Result<Vec<String>, Error> {
    let current = ctx.graph.federated_credentials(&app.id).await?;
    for want in &sp.spec.federated_credentials {
        let desired = FederatedIdentityCredential {
            id: String::new(),
            name: want.name.clone(),
            issuer: want.issuer.clone(),
            subject: want.subject.clone(),
            audiences: want.audiences.clone(),
            description: want.description.clone(),
        };
        let same = current.iter().any(|c| {
            c.name == desired.name
                && c.issuer == desired.issuer
                && c.subject == desired.subject
                && c.audiences == desired.audiences
        });
        if !same {
            ctx.graph
                .upsert_federated_credential(&app.id, &desired)
                .await?;
        }
    }
    let added_before: &[String] = sp
        .status
        .as_ref()
        .map(|s| s.federated_credentials.as_slice())
        .unwrap_or_default();
    let ours = |name: &str| sp.spec.adopt.is_none() || added_before.iter().any(|n| n == name);
    for extra in current.iter().filter(|c| {
        !sp.spec
            .federated_credentials
            .iter()
            .any(|w| w.name == c.name)
            && ours(&c.name)
    }) {
        ctx.graph
            .delete_federated_credential(&app.id, &extra.name)
            .await?;
    }
    Ok(sp
        .spec
        .federated_credentials
        .iter()
        .map(|f| f.name.clone())
        .collect())
}

/// Delivers one password to the Secret: keeps the delivered one if it is still valid (re-rendering when the
/// format changed), otherwise issues a new one and writes it at once; then removes every other password this
/// object issued (those a crash left undelivered, or one removed from the Secret).
async fn converge_password(
    sp: &ServicePrincipal,
    ctx: &Context,
    app: &Application,
    target: &crate::api::SecretTarget,
) -> Result<PasswordCredential, Error> {
    let ns = sp.namespace().unwrap_or_default();
    let name = sp.name_any();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = secrets.get_opt(&target.name).await?;
    if let Some(secret) = &existing
        && !owned_by(secret, sp)
    {
        return Err(Error::SecretConflict(format!("{ns}/{}", target.name)));
    }
    let ours = ours(app, &ns, &name);
    let delivered = existing.as_ref().and_then(|s| {
        let key_id = s.annotations().get(KEY_ID_ANNOTATION)?;
        let password = ours.iter().find(|p| &p.key_id == key_id)?;
        held(s, target, password.hint.as_deref()).map(|h| ((*password).clone(), h))
    });

    let password = match delivered {
        Some((password, Held { text: None, .. })) => password,
        Some((
            password,
            Held {
                text: Some(text),
                format,
                data,
            },
        )) => {
            let rendered = render(sp, ctx, &app.app_id, target, &text)?;
            if format != target.format || rendered != as_text(&data) {
                write_secret(sp, ctx, target, &password.key_id, rendered).await?;
                publish(
                    ctx,
                    sp,
                    EventType::Normal,
                    "SecretUpdated",
                    &format!("Re-rendered Secret {} as {:?}", target.name, target.format),
                )
                .await;
            }
            password
        }
        None => {
            // Under a rotation, a lost or edited Secret is the rotation's to repair: issuing here could make a
            // third password, or replace one an AKS cluster still uses. The first password is still issued
            // here. Read afresh: the watch cache may not show the annotation the rotation set a moment ago.
            if !ours.is_empty()
                && let Some(rotation) = rotated_by(sp, ctx).await?
            {
                return Err(Error::ManagedByRotation(format!(
                    "CredentialRotation {rotation} manages this object's password; it re-issues Secret {}",
                    target.name
                )));
            }
            let serial = ours
                .iter()
                .filter_map(|p| p.display_name.as_deref())
                .filter_map(|d| naming::password_serial(d, &ns, &name))
                .max()
                .unwrap_or(0)
                + 1;
            let lifetime = sp
                .spec
                .credential_lifetime
                .as_ref()
                .map(|d| d.as_std())
                .unwrap_or(DEFAULT_LIFETIME);
            let end = k8s_openapi::jiff::Timestamp::now()
                + k8s_openapi::jiff::SignedDuration::try_from(lifetime)
                    .unwrap_or(k8s_openapi::jiff::SignedDuration::from_hours(8760));
            let new = ctx
                .graph
                .add_password(&app.id, &naming::password_name(&ns, &name, serial), end)
                .await?;
            // Written straight away: the text exists nowhere else, and Graph will never show it again.
            let data = render(sp, ctx, &app.app_id, target, new.secret_text.secret())?;
            write_secret(sp, ctx, target, &new.credential.key_id, data).await?;
            publish(
                ctx,
                sp,
                EventType::Normal,
                "CredentialIssued",
                &format!(
                    "Issued password {} into Secret {}",
                    new.credential.key_id, target.name
                ),
            )
            .await;
            new.credential
        }
    };
    let stale: Vec<_> = ours
        .iter()
        .filter(|p| p.key_id != password.key_id)
        .collect();
    // A rotation keeps its previous password through the overlap, and may be adding the next one.
    let rotated = !stale.is_empty() && rotated_by(sp, ctx).await?.is_some();
    for stale in stale.into_iter().filter(|_| !rotated) {
        ctx.graph.remove_password(&app.id, &stale.key_id).await?;
        publish(
            ctx,
            sp,
            EventType::Normal,
            "CredentialRemoved",
            &format!("Removed password {} that was not delivered", stale.key_id),
        )
        .await;
    }
    Ok(password)
}

/// What a Secret holds of the password it names (by its key-id annotation), if it still holds it.
struct Held {
    /// The secret text; None for a template, whose text cannot be read back.
    text: Option<String>,
    format: SecretFormat,
    data: BTreeMap<String, Vec<u8>>,
}

/// Whether `secret` still holds the password it names, whose hint (its first characters, from Entra) is
/// `hint`: an edited Secret no longer does. A template Secret stands as long as it was rendered from the
/// templates the spec still has.
fn held(secret: &Secret, target: &crate::api::SecretTarget, hint: Option<&str>) -> Option<Held> {
    let annotation = |key: &str| secret.annotations().get(key).cloned();
    let format: SecretFormat =
        serde_json::from_value(json!(annotation(FORMAT_ANNOTATION)?)).ok()?;
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    match secret_format::extract_secret(format, &data) {
        Some(text) if hint.is_some_and(|hint| !text.starts_with(hint)) => None,
        Some(text) => Some(Held {
            text: Some(text),
            format,
            data,
        }),
        None if format == SecretFormat::Template
            && target.format == SecretFormat::Template
            && annotation(TEMPLATES_ANNOTATION) == Some(secrets::templates_digest(target)) =>
        {
            Some(Held {
                text: None,
                format,
                data,
            })
        }
        None => None,
    }
}

/// Whether `data` is exactly what the spec renders for this secret text.
fn renders_as(
    sp: &ServicePrincipal,
    ctx: &Context,
    client_id: &str,
    target: &crate::api::SecretTarget,
    text: &str,
    data: &BTreeMap<String, Vec<u8>>,
) -> Result<bool, Error> {
    Ok(render(sp, ctx, client_id, target, text)? == as_text(data))
}

fn as_text(data: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, String> {
    data.iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect()
}

fn render(
    sp: &ServicePrincipal,
    ctx: &Context,
    client_id: &str,
    target: &crate::api::SecretTarget,
    secret: &str,
) -> Result<BTreeMap<String, String>, Error> {
    let credential = secret_format::Credential {
        client_id,
        client_secret: secret,
        tenant_id: &ctx.tenant_id,
        display_name: &sp.spec.display_name,
        cloud: &ctx.cloud,
    };
    secret_format::render(target.format, target.templates.as_ref(), &credential)
        .map_err(|e| Error::Invalid(e.to_string()))
}

async fn write_secret(
    sp: &ServicePrincipal,
    ctx: &Context,
    target: &crate::api::SecretTarget,
    key_id: &str,
    data: BTreeMap<String, String>,
) -> Result<(), Error> {
    let owner = secrets::Owner {
        object: sp,
        label: OWNER_LABEL,
    };
    secrets::write(&ctx.client, &owner, target, key_id, data).await?;
    Ok(())
}

async fn write_status(
    sp: &ServicePrincipal,
    ctx: &Context,
    status: ServicePrincipalStatus,
) -> Result<(), Error> {
    // Fields that a change can clear are sent as null, so that the merge patch removes them.
    reconcile::patch_status(
        ctx,
        sp,
        sp.status.as_ref(),
        &status,
        &["secretName", "credential"],
    )
    .await?;
    Ok(())
}

/// Since when each object being deleted (by uid) has not found its application: in memory, since a restart
/// only makes the wait start again.
#[derive(Default)]
pub struct Absences(std::sync::Mutex<std::collections::HashMap<String, tokio::time::Instant>>);

impl Absences {
    /// Records a miss; whether misses have held for `grace` since the first.
    fn held_for(&self, uid: &str, grace: Duration) -> bool {
        let mut seen = self.0.lock().expect("absences lock");
        let now = tokio::time::Instant::now();
        // Misses older than an hour are from deletes long finished.
        seen.retain(|_, first| now.duration_since(*first) < Duration::from_secs(3600));
        let first = *seen.entry(uid.to_string()).or_insert(now);
        now.duration_since(first) >= grace
    }
}

/// How long a delete believes that an application it cannot find does not exist, when one may have been
/// created moments ago: Graph's reads can miss a new object for a few seconds (replication).
const REPLICATION_GRACE: Duration = Duration::from_secs(20);
/// An object younger than this may have created an application without living to record it.
const YOUNG: Duration = Duration::from_secs(600);

/// On delete, when the application is not found: if one may exist (status names one, the last reconcile
/// waited for replication, or the object is young enough that a crash may have hidden a create), delete by
/// the recorded id, and keep looking until misses have held for `REPLICATION_GRACE`. A miss believed too
/// soon leaks the application for good.
async fn wait_out_replication(
    sp: &ServicePrincipal,
    ctx: &Context,
    uid: &str,
) -> Result<(), Error> {
    let status = sp.status.as_ref();
    let recorded = status.and_then(|s| s.object_id.clone());
    let replicating = status.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == conditions::READY && c.reason == "WaitingForReplication")
    });
    let young = sp.metadata.creation_timestamp.as_ref().is_some_and(|t| {
        k8s_openapi::jiff::Timestamp::now()
            .duration_since(t.0)
            .as_secs()
            < YOUNG.as_secs() as i64
    });
    if recorded.is_none() && !replicating && !young {
        return Ok(());
    }
    if let Some(id) = &recorded
        && ctx.graph.delete_application(id).await?
    {
        return Ok(());
    }
    if ctx.absences.held_for(uid, REPLICATION_GRACE) {
        return Ok(());
    }
    Err(Error::NotYetVisible("the application to delete", None))
}

async fn cleanup(sp: &ServicePrincipal, ctx: &Context) -> Result<Action, Error> {
    let ns = sp.namespace().unwrap_or_default();
    let name = sp.name_any();
    match sp.spec.deletion_policy {
        DeletionPolicy::Orphan => {
            publish(
                ctx,
                sp,
                EventType::Normal,
                "Orphaned",
                "deletionPolicy Orphan: the application is left in Azure",
            )
            .await;
        }
        DeletionPolicy::Delete => match &sp.spec.adopt {
            None => {
                let uid = sp.uid().unwrap_or_default();
                let key = naming::unique_name(&ctx.cluster_id, &ns, &name, &uid);
                let found = ctx.graph.application_by_unique_name(&key).await?;
                if found.is_none() {
                    wait_out_replication(sp, ctx, &uid).await?;
                }
                if let Some(app) = found {
                    // Deleting the application removes its passwords, federated credentials and service principal.
                    ctx.graph.delete_application(&app.id).await?;
                    info!(object = %format!("{ns}/{name}"), unique_name = %key, "deleted application");
                    if sp.spec.purge_on_delete {
                        // The service principal first: its deleted item is reachable through the application's.
                        if let Some(principal) = sp
                            .status
                            .as_ref()
                            .and_then(|s| s.service_principal_id.as_deref())
                        {
                            ctx.graph.purge_deleted(principal).await?;
                        }
                        ctx.graph.purge_deleted(&app.id).await?;
                    }
                }
            }
            // Never the adopted application itself: only what the operator added to it.
            Some(adopt) => match ctx.graph.application_by_app_id(&adopt.app_id).await {
                Ok(Some(app)) => {
                    for p in ours(&app, &ns, &name) {
                        ctx.graph.remove_password(&app.id, &p.key_id).await?;
                    }
                    for fic in sp
                        .status
                        .iter()
                        .flat_map(|s| s.federated_credentials.iter())
                    {
                        ctx.graph.delete_federated_credential(&app.id, fic).await?;
                    }
                }
                // Gone, or never the operator's to touch (adoption was denied): nothing was added to it.
                Ok(None) => {}
                Err(e) if e.class() == ErrorClass::Forbidden => {}
                Err(e) => return Err(e.into()),
            },
        },
    }
    if let Some(target) = &sp.spec.secret {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        if let Some(secret) = secrets.get_opt(&target.name).await?
            && owned_by(&secret, sp)
        {
            secrets
                .delete(&target.name, &DeleteParams::default())
                .await?;
        }
    }
    ctx.metrics.set_expiry("ServicePrincipal", &ns, &name, None);
    if let Some(status) = &sp.status {
        ctx.drift.forget(
            &[&status.object_id, &status.service_principal_id]
                .into_iter()
                .flatten()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
    }
    Ok(Action::await_change())
}
