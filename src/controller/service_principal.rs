//! The ServicePrincipal controller: converge the application, its service principal, federated credentials and
//! one delivered password; write the Secret; report status; clean up on delete.
//!
//! State lives in Azure and in the Secret, not in memory: the application is found by its derived uniqueName,
//! the operator's passwords by their displayName, the delivered one by the Secret's key-id annotation. So a
//! crash between any two steps is repaired by the next reconcile: a password whose text was never delivered is
//! removed, never leaked.

pub mod wiring;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{
    api::core::v1::{Namespace, Secret},
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, ResourceExt,
    api::DeleteParams,
    runtime::{
        controller::Action, events::EventType, finalizer::Event as Finalized, reflector::ObjectRef,
    },
};
use serde_json::json;

use crate::controller::reconcile::{self, Failure as _};
use tracing::{info, warn};

use super::{
    Context,
    claims::{self, Claimant},
    clock,
    credentials::{self, Held},
    drift, failure, naming,
    policy::{self, applications::Adoption},
    publish, secrets,
};
use crate::{
    api::{
        DeletionPolicy, ServicePrincipal, ServicePrincipalStatus,
        conditions::{self, Progress},
        protocol,
        service_principal::CredentialStatus,
    },
    azure::{
        error::{AzureError, ErrorClass},
        graph::{Application, FederatedIdentityCredential, PasswordCredential},
    },
};

pub use super::reconcile::FINALIZER;
pub use super::secrets::{FORMAT_ANNOTATION, KEY_ID_ANNOTATION, TEMPLATES_ANNOTATION};
pub use crate::api::protocol::{
    ROTATED_BY_ANNOTATION, SERVICE_PRINCIPAL_OWNER_LABEL as OWNER_LABEL,
};

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
    /// Nothing authorizes adopting the application (see `policy::applications::may_adopt`); the message names
    /// spec.adopt.appId and the policy field.
    #[error("{0}")]
    DeniedByPolicy(String),
    /// Another object (or cluster, or someone outside the operator) holds what this one claims: the
    /// application, or a federated credential's name on it. The message names the holder.
    #[error("{0}")]
    Conflict(String),
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
            Error::Azure(e) => failure::azure_reason(e, &failure::APPLICATIONS),
            Error::Kube(_) => "KubernetesError",
            Error::Invalid(_) => "InvalidSpec",
            Error::SecretConflict(_) => "SecretConflict",
            Error::Adoption(_) => "AdoptionDenied",
            Error::NotYetVisible(..) => protocol::WAITING_FOR_REPLICATION,
            Error::ManagedByRotation(_) => protocol::WAITING_FOR_ROTATION,
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
    let mut recorded_credentials = None;
    match converge(sp, ctx, &mut recorded_credentials).await {
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
            if let Some(names) = recorded_credentials {
                // Written before they were created; a failure after must not forget them.
                status.federated_credentials = names;
            }
            let changed = err.record(&mut status.conditions, sp.metadata.generation);
            write_status(sp, ctx, status).await?;
            failure::announce(ctx, sp, &err, changed).await;
            Err(err)
        }
    }
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
            match credentials::held(&secret, target, credential.hint.as_deref()) {
                Some(Held { text: None, .. }) => {}
                Some(held @ Held { text: Some(_), .. })
                    if held.format == target.format
                        && render(
                            sp,
                            ctx,
                            app_id,
                            target,
                            held.text.as_deref().unwrap_or_default(),
                        )? == held.as_text() => {}
                _ => return Ok(None),
            }
        }
        _ => return Ok(None),
    }
    Ok(Some(status.clone()))
}

/// `recorded_credentials`: set when federated credential names were written to status ahead of their creation.
async fn converge(
    sp: &ServicePrincipal,
    ctx: &Context,
    recorded_credentials: &mut Option<Vec<String>>,
) -> Result<ServicePrincipalStatus, Error> {
    if let Some(status) = unchanged(sp, ctx).await? {
        return Ok(status);
    }
    let started = tokio::time::Instant::now();
    let ns = sp.namespace().unwrap_or_default();
    let name = sp.name_any();
    let uid = sp.uid().unwrap_or_default();
    let key = naming::unique_name(&ctx.cluster_id, &ns, &name, &uid);
    if let Some((i, tag)) = sp
        .spec
        .tags
        .iter()
        .enumerate()
        .find(|(_, t)| t.starts_with(naming::MARK_PREFIX))
    {
        return Err(Error::Invalid(format!(
            "spec.tags[{i}]: {tag:?}: tags beginning {} are the operator's ownership marks",
            naming::MARK_PREFIX
        )));
    }
    let mut tags = naming::ownership_tags(&ctx.cluster_id, &ns, &name);
    tags.extend(sp.spec.tags.iter().cloned());

    // Application: read first, write only when something differs (no redundant writes to Graph). An adopted
    // one is authorized and claimed before anything is written to it.
    let (app, credentials, all_credentials_ours) = match &sp.spec.adopt {
        Some(adopt) => {
            let adopted = adopted_application(ctx, sp, &adopt.app_id, tags).await?;
            let created_for_it = adopted.ground == Adoption::CreatedForIt;
            (adopted.app, Some(adopted.credentials), created_for_it)
        }
        None => {
            let fields =
                json!({"displayName": sp.spec.display_name, "notes": sp.spec.notes, "tags": tags});
            (
                created_application(ctx, sp, &key, &fields, &tags).await?,
                None,
                true,
            )
        }
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

    let fic_names = converge_federated_credentials(
        sp,
        ctx,
        &app,
        credentials,
        all_credentials_ours,
        recorded_credentials,
    )
    .await?;

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
            for p in credentials::ours(&app, &ns, &name) {
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
        clock::now_time(),
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

/// An application spec.adopt names, once adopting it is authorized and claimed.
struct Adopted {
    app: Application,
    ground: Adoption,
    /// Its federated credentials, read before anything was written.
    credentials: Vec<FederatedIdentityCredential>,
}

/// An existing application named by spec.adopt, updated in place (never renamed by uniqueName) once three
/// things hold, decided before any write: this object may adopt it (`policy::applications::may_adopt`: being
/// owned by the operator's identity proves nothing, since that identity owns every namespace's
/// applications), no other object holds it (`claim`), and none of spec.federatedCredentials would overwrite
/// a credential of the same name that this object did not add.
async fn adopted_application(
    ctx: &Context,
    sp: &ServicePrincipal,
    app_id: &str,
    mut tags: Vec<String>,
) -> Result<Adopted, Error> {
    let (ns, name) = (sp.namespace().unwrap_or_default(), sp.name_any());
    let labels = namespace_labels(ctx, &ns).await?;
    let read = match ctx.graph.application_by_app_id(app_id).await {
        Ok(app) => Ok(app),
        Err(e) if e.class() == ErrorClass::Forbidden => Err(e),
        Err(e) => return Err(e.into()),
    };
    let marks = match &read {
        Ok(Some(app)) => Some(naming::ownership_marks(&app.tags)),
        _ => None,
    };
    // Authorization first: a namespace with no ground learns nothing about who holds the application, or
    // whether it exists.
    let ground = policy::applications::may_adopt(
        &ctx.policies.state(),
        &ctx.cluster_id,
        &ns,
        &name,
        &labels,
        app_id,
        marks.as_ref(),
    )
    .map_err(Error::DeniedByPolicy)?;
    let app = match read {
        Ok(Some(app)) => app,
        Ok(None) => {
            return Err(Error::Adoption(format!(
                "spec.adopt.appId: no application {app_id} exists"
            )));
        }
        Err(e) => {
            return Err(Error::Adoption(format!(
                "spec.adopt.appId: the operator's identity does not own application {app_id} ({})",
                e.code()
            )));
        }
    };
    claim(
        ctx,
        sp,
        app_id,
        marks.as_ref().unwrap_or(&Default::default()),
    )
    .await?;
    let credentials = ctx.graph.federated_credentials(&app.id).await?;
    if ground != Adoption::CreatedForIt
        && let Some(message) = foreign_credential(sp, app_id, &credentials)
    {
        return Err(Error::Conflict(message));
    }
    if matches!(ground, Adoption::Listed(_)) {
        tags.push(naming::ADOPTED_MARK.to_string());
    }
    let app = if app_matches(&app, &sp.spec.display_name, sp.spec.notes.as_deref(), &tags) {
        app
    } else {
        if let Adoption::Listed(policy) = &ground {
            info!(object = %format!("{ns}/{name}"), app_id, policy = %policy, "adopting an application a policy lists");
        }
        let fields =
            json!({"displayName": sp.spec.display_name, "notes": sp.spec.notes, "tags": tags});
        ctx.graph.update_application(&app.id, &fields).await?;
        ctx.graph
            .application_by_app_id(app_id)
            .await?
            .ok_or(Error::NotYetVisible("the adopted application", None))?
    };
    Ok(Adopted {
        app,
        ground,
        credentials,
    })
}

/// The labels policies select the namespace by.
async fn namespace_labels(ctx: &Context, ns: &str) -> Result<BTreeMap<String, String>, Error> {
    Ok(Api::<Namespace>::all(ctx.client.clone())
        .get(ns)
        .await?
        .metadata
        .labels
        .unwrap_or_default())
}

/// How strongly a ServicePrincipal holds an application: the lower, the stronger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Hold {
    /// It created the application (its status records it, or the marks name it, and it adopts nothing).
    Creator,
    /// It adopts the application, and the marks (written by its adoption) name it.
    Marked,
    /// It adopts the application, and its status records it (an adoption before marks were checked).
    Recorded,
    /// It asks to adopt the application, and has not yet.
    Asking,
}

/// How `sp` holds application `app_id`, whose ownership marks are `marks`; None if it does not claim it.
fn hold(
    sp: &ServicePrincipal,
    cluster_id: &str,
    app_id: &str,
    marks: &naming::Marks,
) -> Option<Hold> {
    let recorded = sp
        .status
        .as_ref()
        .and_then(|s| s.app_id.as_deref())
        .is_some_and(|a| a.eq_ignore_ascii_case(app_id));
    let adopting = sp
        .spec
        .adopt
        .as_ref()
        .is_some_and(|a| a.app_id.eq_ignore_ascii_case(app_id));
    let named = marks.object_of(cluster_id)
        == Some(&format!(
            "{}/{}",
            sp.namespace().unwrap_or_default(),
            sp.name_any()
        ));
    match () {
        _ if sp.spec.adopt.is_none() && (recorded || named) => Some(Hold::Creator),
        _ if adopting && named => Some(Hold::Marked),
        _ if adopting && recorded => Some(Hold::Recorded),
        _ if adopting => Some(Hold::Asking),
        _ => None,
    }
}

/// Whether `me`, holding as `mine`, may act on what `others` also claim: the strongest hold wins, and among
/// equals the oldest object (`claims::check`). Err names the holder.
fn holder(me: &Claimant, mine: Hold, others: &[(Hold, Claimant)]) -> Result<(), Claimant> {
    let Some(best) = others.iter().map(|(h, _)| *h).min() else {
        return Ok(());
    };
    let strongest: Vec<Claimant> = others
        .iter()
        .filter(|(h, _)| *h == best)
        .map(|(_, c)| c.clone())
        .collect();
    if best < mine {
        let oldest = strongest
            .iter()
            .find(|c| claims::check(c, &strongest).is_ok())
            .unwrap_or(&strongest[0]);
        return Err(oldest.clone());
    }
    if best == mine {
        return claims::check(me, &strongest);
    }
    Ok(())
}

/// The exclusive claim on an adopted application: another cluster named by its marks, another
/// ServicePrincipal of this cluster that holds it (created it, adopted it, or may adopt it and is older), or
/// a CredentialRotation that may rotate it by spec.applicationId and is older, holds it instead; this object
/// then gets a Conflict naming the holder and writes nothing. Objects that ask but have no ground hold
/// nothing, so that a denied object cannot block an allowed one.
async fn claim(
    ctx: &Context,
    sp: &ServicePrincipal,
    app_id: &str,
    marks: &naming::Marks,
) -> Result<(), Error> {
    let conflict = |holder: String| {
        Error::Conflict(format!(
            "spec.adopt.appId: application {app_id} is held by {holder}; this object changes nothing in it"
        ))
    };
    if let Some(cluster) = marks.other_cluster(&ctx.cluster_id) {
        let objects = marks.objects.join(", ");
        return Err(conflict(format!("cluster {cluster} (object {objects})")));
    }
    let me = Claimant::of(sp);
    let mine = hold(sp, &ctx.cluster_id, app_id, marks).unwrap_or(Hold::Asking);
    let policies = ctx.policies.state();
    let mut labels: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut others = vec![];
    for other in ctx.claims.service_principals() {
        let them = Claimant::of(other.as_ref());
        if them.namespace == me.namespace && them.name == me.name {
            continue;
        }
        let Some(theirs) = hold(&other, &ctx.cluster_id, app_id, marks) else {
            continue;
        };
        if theirs == Hold::Asking {
            if !labels.contains_key(&them.namespace) {
                let found = namespace_labels(ctx, &them.namespace).await?;
                labels.insert(them.namespace.clone(), found);
            }
            let allowed = policy::applications::may_adopt(
                &policies,
                &ctx.cluster_id,
                &them.namespace,
                &them.name,
                &labels[&them.namespace],
                app_id,
                Some(marks),
            );
            if allowed.is_err() {
                continue;
            }
        }
        others.push((theirs, them));
    }
    holder(&me, mine, &others).map_err(|h| conflict(h.to_string()))?;
    let mut rotations = vec![];
    for rotation in ctx.claims.rotations() {
        if !rotation
            .spec
            .application_id
            .as_deref()
            .is_some_and(|a| a.eq_ignore_ascii_case(app_id))
        {
            continue;
        }
        let them = Claimant::of(rotation.as_ref());
        if !labels.contains_key(&them.namespace) {
            let found = namespace_labels(ctx, &them.namespace).await?;
            labels.insert(them.namespace.clone(), found);
        }
        if policy::may_rotate(&policies, &them.namespace, &labels[&them.namespace], app_id).is_ok()
        {
            rotations.push(them);
        }
    }
    claims::check(&me, &rotations).map_err(|h| conflict(h.to_string()))
}

/// On an adopted application: the first of spec.federatedCredentials whose name the application already has
/// for a credential this object did not add (status lists what it added). Entra compares names without case.
fn foreign_credential(
    sp: &ServicePrincipal,
    app_id: &str,
    current: &[FederatedIdentityCredential],
) -> Option<String> {
    let added = added_credentials(sp);
    sp.spec
        .federated_credentials
        .iter()
        .enumerate()
        .find(|(_, want)| {
            current.iter().any(|c| c.name.eq_ignore_ascii_case(&want.name))
                && !added.iter().any(|n| n.eq_ignore_ascii_case(&want.name))
        })
        .map(|(i, want)| {
            format!(
                "spec.federatedCredentials[{i}].name: application {app_id} already has a federated credential \
                 named {} that this ServicePrincipal did not add; it is left untouched",
                want.name
            )
        })
}

/// The federated credentials this object added (to an adopted application), as its status records them.
fn added_credentials(sp: &ServicePrincipal) -> &[String] {
    sp.status
        .as_ref()
        .map(|s| s.federated_credentials.as_slice())
        .unwrap_or_default()
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

/// Makes the application's federated credentials the spec's; returns the names this object holds there. On
/// an application created for this object (`all_ours`) every other credential goes; on an adopted one only
/// those it added before (listed in status), so that credentials someone else put there survive, and a
/// credential it is about to add is recorded in status first (`recorded`), so that a crash right after the
/// create cannot leave one it would no longer recognise as its own. `current`: the credentials if already read.
async fn converge_federated_credentials(
    sp: &ServicePrincipal,
    ctx: &Context,
    app: &Application,
    current: Option<Vec<FederatedIdentityCredential>>,
    all_ours: bool,
    recorded: &mut Option<Vec<String>>,
) -> Result<Vec<String>, Error> {
    let current = match current {
        Some(c) => c,
        None => ctx.graph.federated_credentials(&app.id).await?,
    };
    let added = added_credentials(sp);
    let ours = |name: &str| all_ours || added.iter().any(|n| n.eq_ignore_ascii_case(name));
    if !all_ours {
        // Checked by adopted_application before any write; checked again since this is where it would happen.
        if let Some(message) = foreign_credential(sp, &app.app_id, &current) {
            return Err(Error::Conflict(message));
        }
        let new: Vec<&String> = sp
            .spec
            .federated_credentials
            .iter()
            .map(|f| &f.name)
            .filter(|n| !ours(n))
            .collect();
        if !new.is_empty() {
            let mut names = added.to_vec();
            names.extend(new.into_iter().cloned());
            let mut status = sp.status.clone().unwrap_or_default();
            status.federated_credentials = names.clone();
            write_status(sp, ctx, status).await?;
            *recorded = Some(names);
        }
    }
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
    for extra in current.iter().filter(|c| {
        !sp.spec
            .federated_credentials
            .iter()
            .any(|w| w.name.eq_ignore_ascii_case(&c.name))
            && ours(&c.name)
    }) {
        ctx.graph
            .delete_federated_credential(&app.id, &extra.name)
            .await?;
    }
    // Every one of them is this object's: a foreign one of the same name stopped it above.
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
    let ours = credentials::ours(app, &ns, &name);
    let delivered = existing
        .as_ref()
        .and_then(|s| credentials::delivered(s, &ours, target, true))
        .map(|(p, h)| (p.clone(), h));

    let password = match delivered {
        Some((password, Held { text: None, .. })) => password,
        Some((password, held @ Held { text: Some(_), .. })) => {
            let text = held.text.as_deref().unwrap_or_default();
            let rendered = render(sp, ctx, &app.app_id, target, text)?;
            if held.format != target.format || rendered != held.as_text() {
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
            let serial = credentials::next_serial(&ours, &ns, &name);
            let lifetime = sp
                .spec
                .credential_lifetime
                .as_ref()
                .map(|d| d.as_std())
                .unwrap_or(credentials::DEFAULT_LIFETIME);
            let end = credentials::expiry(k8s_openapi::jiff::Timestamp::now(), lifetime);
            // Before the password exists: a spec that cannot be delivered must not add one on every retry.
            delivery(sp, ctx, &app.app_id, target)
                .check()
                .map_err(Error::Invalid)?;
            let new = ctx
                .graph
                .add_password(&app.id, &naming::password_name(&ns, &name, serial), end)
                .await?;
            // Written straight away: the text exists nowhere else, and Graph will never show it again.
            let written = match render(sp, ctx, &app.app_id, target, new.secret_text.secret()) {
                Ok(data) => write_secret(sp, ctx, target, &new.credential.key_id, data).await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                // Its text is lost with this reconcile: removed now, so that a delivery failing on every retry
                // (an immutable Secret, a quota, an admission webhook) leaves no trail of live passwords.
                if let Err(removal) = ctx
                    .graph
                    .remove_password(&app.id, &new.credential.key_id)
                    .await
                {
                    warn!(key_id = %new.credential.key_id, error = %removal,
                        "could not remove the password whose delivery failed; the next delivery removes it");
                }
                return Err(e);
            }
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

/// How this object's Secret renders a password of `client_id`.
fn delivery<'a>(
    sp: &'a ServicePrincipal,
    ctx: &'a Context,
    client_id: &'a str,
    target: &'a crate::api::SecretTarget,
) -> credentials::Delivery<'a> {
    credentials::Delivery {
        target,
        client_id,
        tenant_id: &ctx.tenant_id,
        display_name: &sp.spec.display_name,
        cloud: &ctx.cloud,
    }
}

fn render(
    sp: &ServicePrincipal,
    ctx: &Context,
    client_id: &str,
    target: &crate::api::SecretTarget,
    secret: &str,
) -> Result<BTreeMap<String, String>, Error> {
    delivery(sp, ctx, client_id, target)
        .render(secret)
        .map_err(Error::Invalid)
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
        &["secretName", "credential", "federatedCredentials"],
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
            .any(|c| c.type_ == conditions::READY && c.reason == protocol::WAITING_FOR_REPLICATION)
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
            // Never the adopted application itself: only what this object added to it, and only if it held
            // it (its marks name this object, as its adoption wrote them before adding anything). An object
            // whose adoption was denied or lost to another holder added nothing: the passwords of its name and
            // the credentials there are someone else's.
            Some(adopt) => match ctx.graph.application_by_app_id(&adopt.app_id).await {
                Ok(Some(app))
                    if naming::ownership_marks(&app.tags).object_of(&ctx.cluster_id)
                        == Some(&format!("{ns}/{name}")) =>
                {
                    for p in credentials::ours(&app, &ns, &name) {
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
                // Gone, held by another, or never the operator's to touch: nothing of this object's is there.
                Ok(_) => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ServicePrincipalSpec;

    const APP: &str = "5a5a5a5a-0000-4000-8000-000000005a5a";

    fn sp(ns: &str, name: &str, created: i64, adopt: bool, recorded: bool) -> ServicePrincipal {
        let mut spec: ServicePrincipalSpec =
            serde_json::from_value(json!({"displayName": name})).unwrap();
        if adopt {
            spec.adopt = Some(crate::api::service_principal::Adopt {
                app_id: APP.to_uppercase(),
            });
        }
        let mut sp = ServicePrincipal::new(name, spec);
        sp.metadata.namespace = Some(ns.into());
        sp.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
        ));
        if recorded {
            sp.status = Some(ServicePrincipalStatus {
                app_id: Some(APP.into()),
                ..Default::default()
            });
        }
        sp
    }

    #[test]
    fn how_an_object_holds_an_application() {
        let marks = naming::ownership_marks(&naming::ownership_tags("c1", "a", "owner"));
        let table = [
            (
                "created it (status)",
                sp("b", "x", 1, false, true),
                Some(Hold::Creator),
            ),
            (
                "created it (marks)",
                sp("a", "owner", 1, false, false),
                Some(Hold::Creator),
            ),
            (
                "adopted it, marked",
                sp("a", "owner", 1, true, true),
                Some(Hold::Marked),
            ),
            (
                "adopted it, recorded",
                sp("b", "x", 1, true, true),
                Some(Hold::Recorded),
            ),
            ("asks", sp("b", "x", 1, true, false), Some(Hold::Asking)),
            ("unrelated", sp("b", "x", 1, false, false), None),
        ];
        for (what, object, want) in table {
            assert_eq!(hold(&object, "c1", APP, &marks), want, "{what}");
        }
        // Marks of another cluster name nobody here.
        assert_eq!(
            hold(&sp("a", "owner", 1, true, false), "c2", APP, &marks),
            Some(Hold::Asking)
        );
    }

    #[test]
    fn the_strongest_hold_wins_then_the_oldest_object() {
        let c = |ns: &str, created: i64| Claimant::of(&sp(ns, "x", created, true, false));
        let (old, new) = (c("old", 100), c("new", 200));
        // Holding beats age: a victim that created or adopted the application keeps it against an older asker.
        assert_eq!(
            holder(&old, Hold::Asking, &[(Hold::Creator, new.clone())]),
            Err(new.clone())
        );
        assert_eq!(
            holder(&old, Hold::Asking, &[(Hold::Marked, new.clone())]),
            Err(new.clone())
        );
        assert_eq!(
            holder(&new, Hold::Marked, &[(Hold::Asking, old.clone())]),
            Ok(())
        );
        // Among equals the oldest, whatever order the store lists them in.
        assert_eq!(
            holder(&new, Hold::Asking, &[(Hold::Asking, old.clone())]),
            Err(old.clone())
        );
        assert_eq!(
            holder(&old, Hold::Asking, &[(Hold::Asking, new.clone())]),
            Ok(())
        );
        let older = c("older", 50);
        assert_eq!(
            holder(
                &new,
                Hold::Asking,
                &[
                    (Hold::Recorded, old.clone()),
                    (Hold::Recorded, older.clone())
                ]
            ),
            Err(older.clone())
        );
        assert_eq!(holder(&new, Hold::Asking, &[]), Ok(()), "alone");
    }

    #[test]
    fn a_same_named_credential_this_object_did_not_add_is_foreign() {
        let fic = |name: &str| FederatedIdentityCredential {
            id: String::new(),
            name: name.into(),
            issuer: "https://issuer".into(),
            subject: "system:serviceaccount:a:b".into(),
            audiences: vec!["api://AzureADTokenExchange".into()],
            description: None,
        };
        let mut adopter = sp("a", "x", 1, true, false);
        adopter.spec.federated_credentials = serde_json::from_value(json!([
            {"name": "mine", "issuer": "https://issuer", "subject": "s"},
            {"name": "Shared", "issuer": "https://issuer", "subject": "s"},
        ]))
        .unwrap();
        let current = [fic("shared"), fic("theirs")];
        let message = foreign_credential(&adopter, APP, &current).unwrap();
        assert!(
            message.starts_with("spec.federatedCredentials[1].name:") && message.contains("Shared"),
            "{message}"
        );
        adopter.status = Some(ServicePrincipalStatus {
            federated_credentials: vec!["mine".into(), "shared".into()],
            ..Default::default()
        });
        let current = [fic("shared"), fic("mine"), fic("theirs")];
        assert_eq!(
            foreign_credential(&adopter, APP, &current),
            None,
            "both its own"
        );
        assert_eq!(
            foreign_credential(&adopter, APP, &[fic("theirs")]),
            None,
            "no name taken"
        );
    }
}
