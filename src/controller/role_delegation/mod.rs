//! The RoleDelegation controller: check the guardrail, find the principal and the role, PUT the assignment on
//! its deterministic name, ride out principal replication, replace on change, repair drift, remove on delete.
//!
//! Nothing is kept in memory but a cache of role definitions: the assignment is found again by its name (a
//! UUIDv5 of scope, role and principal), a custom role by its GUID (a UUIDv5 of cluster, namespace and role
//! name), and what was granted before by the object's status.

mod plan;

use std::{sync::Arc, time::Duration};

use k8s_openapi::{
    api::core::v1::Namespace, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::ListParams,
    runtime::{
        controller::Action, events::EventType, finalizer::Event as Finalized, reflector::ObjectRef,
    },
};

use crate::controller::reconcile::{self, Failure as _};
use tracing::{info, warn};

use super::{
    Context, drift, naming,
    policy::{self, Decision, RoleAsked},
    publish,
};
use crate::{
    api::{
        DeletionPolicy, RoleDelegation, RoleDelegationStatus, ServicePrincipal,
        conditions::{self, Progress},
    },
    azure::{
        arm::{self, CustomRoleDefinition, Grant, RoleDefinition},
        error::{AzureError, ErrorClass},
        scope::Scope,
    },
};

pub use super::reconcile::FINALIZER;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Azure(#[from] AzureError),
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// A spec the operator cannot act on; the message names the field.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    DeniedByPolicy(String),
    #[error("{0}")]
    ServicePrincipalNotFound(String),
    #[error("{0}")]
    WaitingForServicePrincipal(String),
    #[error("{0}")]
    RoleNotFound(String),
    #[error("{0}")]
    RoleNotAssignable(String),
    #[error("{0}")]
    CustomRoleConflict(String),
    /// The scope does not exist in Azure (ARM's 404 for the subscription, resource group or resource).
    #[error("spec.scope: {0}")]
    ScopeNotFound(AzureError),
    /// The operator's identity may not assign roles (or define them) at the scope.
    #[error("the operator's identity is not authorized at spec.scope: {0}")]
    AuthorizationFailed(AzureError),
    /// Azure does not know the principal yet; retry after the delay.
    #[error("{message}")]
    PrincipalReplicating { message: String, retry: Duration },
    /// Azure still does not know the principal after the whole replication window.
    #[error("{0}")]
    PrincipalNotFound(String),
}

impl reconcile::Failure for Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::Azure(e) => match e.class() {
                ErrorClass::Throttled(_) => "Throttled",
                ErrorClass::Forbidden => "AuthorizationFailed",
                ErrorClass::Invalid => "AzureRejected",
                _ => "AzureUnavailable",
            },
            Error::Kube(_) => "KubernetesError",
            Error::Invalid(_) => "InvalidSpec",
            Error::DeniedByPolicy(_) => "DeniedByPolicy",
            Error::ServicePrincipalNotFound(_) => "ServicePrincipalNotFound",
            Error::WaitingForServicePrincipal(_) => "WaitingForServicePrincipal",
            Error::RoleNotFound(_) => "RoleNotFound",
            Error::RoleNotAssignable(_) => "RoleNotAssignableAtScope",
            Error::CustomRoleConflict(_) => "CustomRoleConflict",
            Error::ScopeNotFound(_) => "ScopeNotFound",
            Error::AuthorizationFailed(_) => "AuthorizationFailed",
            Error::PrincipalReplicating { .. } => "WaitingForPrincipalReplication",
            Error::PrincipalNotFound(_) => "PrincipalNotFound",
        }
    }

    fn retry_after(&self) -> Duration {
        match self {
            Error::Azure(e) => reconcile::azure_retry(e),
            Error::PrincipalReplicating { retry, .. } => *retry,
            // The ServicePrincipal and policy watches bring these back as soon as something changes.
            Error::ServicePrincipalNotFound(_)
            | Error::WaitingForServicePrincipal(_)
            | Error::DeniedByPolicy(_) => Duration::from_secs(600),
            // A resource or grant made in Azure has no watch here: look again now and then.
            Error::ScopeNotFound(_) | Error::AuthorizationFailed(_) => Duration::from_secs(120),
            Error::PrincipalNotFound(_) => Duration::from_secs(900),
            Error::Invalid(_)
            | Error::RoleNotFound(_)
            | Error::RoleNotAssignable(_)
            | Error::CustomRoleConflict(_) => Duration::from_secs(300),
            Error::Kube(_) => Duration::from_secs(5),
        }
    }
}

impl Error {
    /// Whether only a change from outside (spec, policy, grant, an Azure resource) can help.
    fn stalled(&self) -> bool {
        match self {
            Error::Azure(e) => reconcile::azure_stalled(e),
            Error::Invalid(_)
            | Error::DeniedByPolicy(_)
            | Error::RoleNotFound(_)
            | Error::RoleNotAssignable(_)
            | Error::CustomRoleConflict(_)
            | Error::ScopeNotFound(_)
            | Error::AuthorizationFailed(_)
            | Error::PrincipalNotFound(_) => true,
            Error::Kube(_)
            | Error::ServicePrincipalNotFound(_)
            | Error::WaitingForServicePrincipal(_)
            | Error::PrincipalReplicating { .. } => false,
        }
    }
}

/// Maps an ARM failure at the assignment's scope to the reason users act on.
fn at_scope(e: AzureError) -> Error {
    match (e.class(), e.code()) {
        (_, "SubscriptionNotFound" | "ResourceGroupNotFound" | "ResourceNotFound") => {
            Error::ScopeNotFound(e)
        }
        (ErrorClass::Forbidden, _) => Error::AuthorizationFailed(e),
        _ => Error::Azure(e),
    }
}

pub async fn reconcile(
    rd: Arc<RoleDelegation>,
    ctx: Arc<Context>,
) -> Result<Action, kube::runtime::finalizer::Error<Error>> {
    reconcile::run("RoleDelegation", rd, ctx, |event, ctx| async move {
        match event {
            Finalized::Apply(rd) => apply(&rd, &ctx).await,
            Finalized::Cleanup(rd) => {
                let done = cleanup(&rd, &ctx).await?;
                if let Some(id) = rd
                    .status
                    .as_ref()
                    .and_then(|s| s.role_assignment_id.as_deref())
                {
                    ctx.drift.forget(&[id]);
                }
                Ok(done)
            }
        }
    })
    .await
}

async fn apply(rd: &RoleDelegation, ctx: &Context) -> Result<Action, Error> {
    let mut status = rd.status.clone().unwrap_or_default();
    let result = converge(rd, ctx, &mut status).await;
    status.observed_generation = rd.metadata.generation;
    match result {
        Ok(()) => {
            let message = format!(
                "{} is assigned to {} at {}",
                status.role_name.as_deref().unwrap_or_default(),
                status.principal_id.as_deref().unwrap_or_default(),
                rd.spec.scope
            );
            conditions::summarize(
                &mut status.conditions,
                Progress::Ready(&message),
                rd.metadata.generation,
                now(),
            );
            write_status(rd, ctx, status).await?;
            // An assignment removed in Azure is found at the next resync.
            Ok(Action::requeue(ctx.resync))
        }
        Err(err) => {
            if !matches!(
                err,
                Error::PrincipalReplicating { .. } | Error::PrincipalNotFound(_)
            ) {
                // The wait is for one run of PrincipalNotFound answers: anything else starts it afresh.
                status.waiting_for_principal_since = None;
            }
            let message = err.to_string();
            let changed = conditions::record_failure(
                &mut status.conditions,
                err.reason(),
                &message,
                err.stalled(),
                rd.metadata.generation,
                now(),
            );
            write_status(rd, ctx, status).await?;
            if changed {
                publish(ctx, rd, EventType::Warning, err.reason(), &message).await;
            }
            Err(err)
        }
    }
}

async fn converge(
    rd: &RoleDelegation,
    ctx: &Context,
    status: &mut RoleDelegationStatus,
) -> Result<(), Error> {
    let ns = rd.namespace().unwrap_or_default();
    let scope =
        Scope::parse(&rd.spec.scope).map_err(|e| Error::Invalid(format!("spec.scope: {e}")))?;
    let role = &rd.spec.role;
    let custom_scopes = match &role.custom {
        Some(custom) => plan::custom_scopes(custom, &scope).map_err(Error::Invalid)?,
        None => vec![],
    };

    // The guardrail first: a denied delegation sends nothing to Azure (except a revocation).
    let asked = match (&role.name, &role.id, &role.custom) {
        (Some(name), _, _) => RoleAsked::Name(name),
        (_, Some(id), _) => RoleAsked::Id(arm::definition_guid(id)),
        (_, _, Some(custom)) => RoleAsked::Custom {
            actions: &custom.actions,
            data_actions: &custom.data_actions,
            assignable_scopes: &custom_scopes,
        },
        _ => {
            return Err(Error::Invalid(
                "spec.role: one of name, id and custom must be set".into(),
            ));
        }
    };
    let labels = Api::<Namespace>::all(ctx.client.clone())
        .get(&ns)
        .await?
        .metadata
        .labels
        .unwrap_or_default();
    let policies = ctx.policies.state();
    match policy::decide(
        &policies,
        &ns,
        &labels,
        &scope,
        asked,
        status.policy.as_deref(),
    ) {
        Decision::Allowed { policy } => status.policy = Some(policy),
        Decision::Denied { message, revoke } => {
            return Err(Error::DeniedByPolicy(
                deny(rd, ctx, status, message, revoke).await?,
            ));
        }
    }

    let principal_id = principal(rd, ctx).await?;
    let definition = resolve_role(rd, ctx, &scope, &custom_scopes).await?;
    let role_guid = arm::definition_guid(&definition.id).to_ascii_lowercase();
    // Now that Azure has said what the role is: a "*" in a policy covers neither a role that can assign roles
    // nor someone else's custom role (built-in names alone cannot tell).
    if role.custom.is_none() {
        let props = &definition.properties;
        let ours = naming::custom_role_guid(&ctx.cluster_id, &ns, &props.role_name) == role_guid;
        let must_be_named = policy::can_assign_roles(&props.permissions)
            || !(props.role_type.eq_ignore_ascii_case("BuiltInRole") || ours);
        let resolved = RoleAsked::Resolved {
            name: &props.role_name,
            guid: &role_guid,
            must_be_named,
        };
        if let Decision::Denied { message, revoke } = policy::decide(
            &policies,
            &ns,
            &labels,
            &scope,
            resolved,
            status.policy.as_deref(),
        ) {
            return Err(Error::DeniedByPolicy(
                deny(rd, ctx, status, message, revoke).await?,
            ));
        }
    }
    if !plan::assignable_at(&definition.properties.assignable_scopes, &scope) {
        return Err(Error::RoleNotAssignable(format!(
            "spec.role: {} can be assigned only at {}, not at spec.scope {scope}",
            definition.properties.role_name,
            definition.properties.assignable_scopes.join(", ")
        )));
    }

    let before = status.clone();
    let name = arm::assignment_name(scope.as_str(), &role_guid, &principal_id);
    let wanted = plan::Wanted {
        condition: rd.spec.condition.as_deref(),
        description: rd.spec.description.as_deref(),
    };
    let (assignment_id, pre_existing) = match assign(
        rd,
        ctx,
        &scope,
        &name,
        &definition,
        &principal_id,
        &wanted,
        status,
    )
    .await?
    {
        Assigned::Ours { created } => {
            if created {
                let drift = before.role_assignment_id.as_deref()
                    == Some(arm::assignment_id(scope.as_str(), &name).as_str());
                let (reason, note) = if drift {
                    (
                        "RoleAssignmentRecreated",
                        "Recreated the role assignment, which had been removed in Azure",
                    )
                } else {
                    ("RoleAssigned", "Assigned the role")
                };
                info!(object = %format!("{ns}/{}", rd.name_any()), assignment = %name, reason, "role assignment");
                publish(
                    ctx,
                    rd,
                    EventType::Normal,
                    reason,
                    &format!(
                        "{note}: {} to {principal_id} at {scope}",
                        definition.properties.role_name
                    ),
                )
                .await;
            }
            (arm::assignment_id(scope.as_str(), &name), false)
        }
        Assigned::PreExisting(id) => {
            if before.role_assignment_id.as_deref() != Some(id.as_str()) {
                publish(
                        ctx,
                        rd,
                        EventType::Normal,
                        "PreExistingAssignment",
                        &format!("The role is already assigned by {id}, which is not the operator's and is never removed by it"),
                    )
                    .await;
            }
            (id, true)
        }
    };

    // Replaced (role, scope or principal changed): the new assignment stands, so the old one can go. It is
    // recorded first, so that a failure (or a delete) before it is removed does not forget it.
    if let Some(old) = before.role_assignment_id.as_deref()
        && !old.eq_ignore_ascii_case(&assignment_id)
        && before.pre_existing != Some(true)
        && !status
            .pending_removal
            .iter()
            .any(|p| p.eq_ignore_ascii_case(old))
    {
        status.pending_removal.push(old.to_string());
    }
    status
        .pending_removal
        .retain(|p| !p.eq_ignore_ascii_case(&assignment_id));
    status.role_assignment_id = Some(assignment_id);
    status.pre_existing = pre_existing.then_some(true);
    status.role_definition_id = Some(definition.id.clone());
    status.role_name = Some(definition.properties.role_name.clone());
    status.principal_id = Some(principal_id);
    status.waiting_for_principal_since = None;
    while let Some(old) = status.pending_removal.first().cloned() {
        remove_assignment(ctx, &old).await?;
        status.pending_removal.remove(0);
        publish(
            ctx,
            rd,
            EventType::Normal,
            "RoleAssignmentReplaced",
            &format!("Removed the previous assignment {old}"),
        )
        .await;
    }
    if let Some(old_guid) = our_custom_role(ctx, rd, &before)
        && old_guid != role_guid
    {
        remove_custom_role_if_unused(rd, ctx, &old_guid, before.role_definition_id.as_deref())
            .await?;
    }
    Ok(())
}

/// Reports a denial; revokes the operator's assignment when the policy says so. Returns the message.
async fn deny(
    rd: &RoleDelegation,
    ctx: &Context,
    status: &mut RoleDelegationStatus,
    message: String,
    revoke: bool,
) -> Result<String, Error> {
    let ours = status
        .role_assignment_id
        .clone()
        .filter(|_| status.pre_existing != Some(true));
    let Some(id) = ours else {
        return Ok(message);
    };
    if !revoke {
        return Ok(format!(
            "{message}; the existing assignment {id} is kept (a policy with violations: Revoke removes it)"
        ));
    }
    remove_assignment(ctx, &id).await?;
    if let Some(guid) = our_custom_role(ctx, rd, status) {
        remove_custom_role_if_unused(rd, ctx, &guid, status.role_definition_id.as_deref()).await?;
    }
    publish(
        ctx,
        rd,
        EventType::Warning,
        "Revoked",
        &format!("Removed assignment {id}: {message}"),
    )
    .await;
    status.role_assignment_id = None;
    status.pre_existing = None;
    status.policy = None;
    status.role_definition_id = None;
    status.role_name = None;
    status.principal_id = None;
    Ok(format!("{message}; the assignment {id} was revoked"))
}

/// The principal's object id: given, or that of the referenced ServicePrincipal once it is Ready.
async fn principal(rd: &RoleDelegation, ctx: &Context) -> Result<String, Error> {
    if let Some(id) = &rd.spec.principal_id {
        return Ok(id.to_ascii_lowercase());
    }
    let Some(reference) = &rd.spec.principal_ref else {
        return Err(Error::Invalid(
            "spec: one of principalRef and principalId must be set".into(),
        ));
    };
    let ns = rd.namespace().unwrap_or_default();
    let sps: Api<ServicePrincipal> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(sp) = sps.get_opt(&reference.name).await? else {
        return Err(Error::ServicePrincipalNotFound(format!(
            "spec.principalRef.name: ServicePrincipal {} does not exist in namespace {ns}",
            reference.name
        )));
    };
    let status = sp.status.as_ref();
    match status.and_then(|s| s.service_principal_id.clone()) {
        Some(id)
            if status.is_some_and(|s| conditions::is_true(&s.conditions, conditions::READY)) =>
        {
            Ok(id)
        }
        _ => Err(Error::WaitingForServicePrincipal(format!(
            "spec.principalRef.name: waiting for ServicePrincipal {} to be Ready",
            reference.name
        ))),
    }
}

/// The role definition: found by name or id as the scope sees it, or the custom role defined (or updated).
async fn resolve_role(
    rd: &RoleDelegation,
    ctx: &Context,
    scope: &Scope,
    custom_scopes: &[Scope],
) -> Result<RoleDefinition, Error> {
    let role = &rd.spec.role;
    if let Some(name) = &role.name {
        return ctx
            .roles
            .by_name(&ctx.arm, scope.as_str(), name)
            .await
            .map_err(at_scope)?
            .ok_or_else(|| {
                Error::RoleNotFound(format!(
                    "spec.role.name: no role named '{name}' can be seen at {scope}"
                ))
            });
    }
    if let Some(id) = &role.id {
        let guid = arm::definition_guid(id);
        return ctx
            .arm
            .role_definition(scope.as_str(), guid)
            .await
            .map_err(at_scope)?
            .ok_or_else(|| {
                Error::RoleNotFound(format!(
                    "spec.role.id: no role definition {guid} can be seen at {scope}"
                ))
            });
    }
    let custom = role.custom.as_ref().expect("validated in converge");
    let ns = rd.namespace().unwrap_or_default();
    let guid = naming::custom_role_guid(&ctx.cluster_id, &ns, &custom.role_name);
    let home = custom_scopes[0].as_str();
    if let Some(existing) = ctx
        .arm
        .role_definition(home, &guid)
        .await
        .map_err(at_scope)?
        && plan::custom_role_matches(&existing, custom, &ns, custom_scopes)
    {
        return Ok(existing);
    }
    // Another delegation in the namespace may define the same role differently: the two must agree.
    let others = Api::<RoleDelegation>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await?;
    if let Some(other) = others.items.iter().find(|o| {
        o.uid() != rd.uid()
            && o.metadata.deletion_timestamp.is_none()
            && o.spec.role.custom.as_ref().is_some_and(|c| {
                let their_scopes = Scope::parse(&o.spec.scope)
                    .ok()
                    .and_then(|s| plan::custom_scopes(c, &s).ok());
                c.role_name.eq_ignore_ascii_case(&custom.role_name)
                    && !(plan::same_custom_role(c, custom)
                        && their_scopes.as_deref() == Some(custom_scopes))
            })
    }) {
        return Err(Error::CustomRoleConflict(format!(
            "spec.role.custom: RoleDelegation {} defines the custom role '{}' differently; delegations that share \
             a custom role must define it the same way (assignableScopes included)",
            other.name_any(),
            custom.role_name
        )));
    }
    let scopes: Vec<String> = custom_scopes.iter().map(Scope::to_string).collect();
    let description = plan::custom_description(custom, &ns);
    let definition = CustomRoleDefinition {
        role_name: &custom.role_name,
        description: &description,
        permission: plan::custom_permission(custom),
        assignable_scopes: &scopes,
    };
    match ctx.arm.put_role_definition(home, &guid, &definition).await {
        Ok(defined) => {
            publish(
                ctx,
                rd,
                EventType::Normal,
                "CustomRoleDefined",
                &format!("Defined custom role '{}' ({guid})", custom.role_name),
            )
            .await;
            Ok(defined)
        }
        Err(e) if e.code() == "RoleDefinitionWithSameNameExists" => {
            Err(Error::CustomRoleConflict(format!(
                "spec.role.custom.roleName: a role named '{}' already exists in the tenant and is not this \
             namespace's; choose another name",
                custom.role_name
            )))
        }
        Err(e) => Err(at_scope(e)),
    }
}

enum Assigned {
    /// The operator's assignment, under its deterministic name; `created` when this reconcile PUT it.
    Ours { created: bool },
    /// The same grant exists under another name: someone else's, recorded and never removed.
    PreExisting(String),
}

/// Makes sure the grant exists: reads first, PUTs only what is missing or different.
#[allow(clippy::too_many_arguments)]
async fn assign(
    rd: &RoleDelegation,
    ctx: &Context,
    scope: &Scope,
    name: &str,
    definition: &RoleDefinition,
    principal_id: &str,
    wanted: &plan::Wanted<'_>,
    status: &mut RoleDelegationStatus,
) -> Result<Assigned, Error> {
    let role_guid = arm::definition_guid(&definition.id);
    // A grant recorded as someone else's: as long as it stands, there is nothing to do.
    if status.pre_existing == Some(true)
        && let Some((at, other)) = status
            .role_assignment_id
            .as_deref()
            .and_then(arm::split_assignment_id)
        && let Some(found) = ctx.arm.role_assignment(at, other).await.map_err(at_scope)?
        && Scope::parse(&found.properties.scope).is_ok_and(|s| s == *scope)
        && plan::assignment_matches(
            &found,
            role_guid,
            principal_id,
            &plan::Wanted {
                condition: found.properties.condition.as_deref(),
                description: found.properties.description.as_deref(),
            },
        )
    {
        return Ok(Assigned::PreExisting(found.id));
    }
    let id = arm::assignment_id(scope.as_str(), name);
    let owner = || drift::Owner::RoleDelegation(ObjectRef::from_obj(rd));
    // The same assignment as when this spec was last Ready, and its subscription's listing has seen no
    // change to it since: nothing to read.
    if status.pre_existing != Some(true)
        && status.observed_generation == rd.metadata.generation
        && conditions::is_true(&status.conditions, conditions::READY)
        && status
            .role_assignment_id
            .as_deref()
            .is_some_and(|known| known.eq_ignore_ascii_case(&id))
        && ctx.drift.fresh(drift::Source::Arm, &[&id])
    {
        return Ok(Assigned::Ours { created: false });
    }
    let started = tokio::time::Instant::now();
    let existing = ctx
        .arm
        .role_assignment(scope.as_str(), name)
        .await
        .map_err(at_scope)?;
    if let Some(a) = existing
        .as_ref()
        .filter(|a| plan::assignment_matches(a, role_guid, principal_id, wanted))
    {
        let p = &a.properties;
        let grant = drift::grant_hash(
            &p.role_definition_id,
            &p.principal_id,
            p.condition.as_deref(),
            p.description.as_deref(),
        );
        ctx.drift.verified_grant(&id, grant, started, owner());
        return Ok(Assigned::Ours { created: false });
    }
    let grant = Grant {
        role_definition_id: &definition.id,
        principal_id,
        condition: wanted.condition,
        condition_version: rd.spec.condition_version.map(|_| "2.0"),
        description: wanted.description,
    };
    match ctx
        .arm
        .put_role_assignment(scope.as_str(), name, &grant)
        .await
    {
        Ok(_) => {
            let grant = drift::grant_hash(
                &definition.id,
                principal_id,
                wanted.condition,
                wanted.description,
            );
            ctx.drift.verified_grant(&id, grant, started, owner());
            Ok(Assigned::Ours {
                created: existing.is_none(),
            })
        }
        Err(e) if e.code() == "RoleAssignmentExists" => {
            let found = ctx
                .arm
                .role_assignments_of(scope.as_str(), principal_id)
                .await
                .map_err(at_scope)?
                .into_iter()
                .find(|a| {
                    Scope::parse(&a.properties.scope).is_ok_and(|s| s == *scope)
                        && arm::definition_guid(&a.properties.role_definition_id)
                            .eq_ignore_ascii_case(role_guid)
                });
            match found {
                Some(a) => Ok(Assigned::PreExisting(a.id)),
                // Listed nowhere we can see: report ARM's answer rather than guess.
                None => Err(Error::Azure(e)),
            }
        }
        Err(e) if e.code() == "PrincipalNotFound" => {
            let since = status
                .waiting_for_principal_since
                .clone()
                .unwrap_or_else(now);
            let elapsed = Timestamp::now()
                .duration_since(since.0)
                .try_into()
                .unwrap_or_default();
            status.waiting_for_principal_since = Some(since);
            match plan::replication_retry(elapsed, ctx.principal_replication_window) {
                Some(retry) => Err(Error::PrincipalReplicating {
                    // No retry delay in the text: the message (and so the Event) stays the same while waiting.
                    message: format!(
                        "Azure does not know principal {principal_id} yet (replication of a new principal can take \
                         up to an hour); retrying with growing intervals for up to {}m",
                        ctx.principal_replication_window.as_secs().div_ceil(60)
                    ),
                    retry,
                }),
                None => Err(Error::PrincipalNotFound(format!(
                    "spec.principal: Azure still does not know principal {principal_id} after {}m; check that it \
                     exists in tenant {}",
                    ctx.principal_replication_window.as_secs() / 60,
                    ctx.tenant_id
                ))),
            }
        }
        Err(e) => Err(at_scope(e)),
    }
}

/// Removes an assignment by its id; one already gone is fine.
async fn remove_assignment(ctx: &Context, id: &str) -> Result<(), Error> {
    let Some((scope, name)) = arm::split_assignment_id(id) else {
        warn!(id, "not a role assignment id; nothing removed");
        return Ok(());
    };
    ctx.arm.delete_role_assignment(scope, name).await?;
    ctx.drift.forget(&[id]);
    Ok(())
}

/// The GUID of the custom role the status says was assigned, if it is this namespace's (derived from its name).
fn our_custom_role(
    ctx: &Context,
    rd: &RoleDelegation,
    status: &RoleDelegationStatus,
) -> Option<String> {
    let (name, id) = (
        status.role_name.as_deref()?,
        status.role_definition_id.as_deref()?,
    );
    let guid = naming::custom_role_guid(&ctx.cluster_id, &rd.namespace().unwrap_or_default(), name);
    arm::definition_guid(id)
        .eq_ignore_ascii_case(&guid)
        .then_some(guid)
}

/// Removes this namespace's custom role unless another live delegation in the namespace still uses it.
async fn remove_custom_role_if_unused(
    rd: &RoleDelegation,
    ctx: &Context,
    guid: &str,
    definition_id: Option<&str>,
) -> Result<(), Error> {
    let ns = rd.namespace().unwrap_or_default();
    let others = Api::<RoleDelegation>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await?;
    let used = others.items.iter().any(|o| {
        o.uid() != rd.uid()
            && o.metadata.deletion_timestamp.is_none()
            && o.spec.role.custom.as_ref().is_some_and(|c| {
                naming::custom_role_guid(&ctx.cluster_id, &ns, &c.role_name) == guid
            })
    });
    if used {
        return Ok(());
    }
    // The role lives at its first assignable scope; read it to know where, unless it is already gone.
    let home = match definition_id {
        Some(id) if id.to_ascii_lowercase().starts_with("/subscriptions/") => id
            .to_ascii_lowercase()
            .find("/providers/microsoft.authorization/")
            .map(|at| id[..at].to_string()),
        _ => None,
    };
    let home = match home {
        Some(h) => h,
        None => match rd.spec.role.custom.as_ref() {
            Some(c) => match plan::custom_scopes(
                c,
                &Scope::parse(&rd.spec.scope).map_err(|e| Error::Invalid(e.to_string()))?,
            ) {
                Ok(s) => s[0].to_string(),
                Err(e) => return Err(Error::Invalid(e)),
            },
            None => {
                warn!(
                    guid,
                    "cannot tell where the custom role lives; left in place"
                );
                return Ok(());
            }
        },
    };
    match ctx.arm.delete_role_definition(&home, guid).await {
        Ok(()) => {}
        // Still assigned somewhere (an orphaned delegation's assignment, or one made outside the cluster):
        // the role stays, and this delegation's clean-up is not held up by it.
        Err(e) if e.code() == "RoleDefinitionHasAssignments" => {
            publish(
                ctx,
                rd,
                EventType::Normal,
                "CustomRoleKept",
                &format!("Custom role {guid} is still assigned elsewhere and is left in place"),
            )
            .await;
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    publish(
        ctx,
        rd,
        EventType::Normal,
        "CustomRoleRemoved",
        &format!("Removed custom role {guid}, which no delegation uses any more"),
    )
    .await;
    Ok(())
}

async fn cleanup(rd: &RoleDelegation, ctx: &Context) -> Result<Action, Error> {
    if rd.spec.deletion_policy == DeletionPolicy::Orphan {
        publish(
            ctx,
            rd,
            EventType::Normal,
            "Orphaned",
            "deletionPolicy Orphan: the role assignment is left in Azure",
        )
        .await;
        return Ok(Action::await_change());
    }
    let status = rd.status.clone().unwrap_or_default();
    let current = status
        .role_assignment_id
        .as_deref()
        .filter(|_| status.pre_existing != Some(true));
    for id in current
        .into_iter()
        .chain(status.pending_removal.iter().map(String::as_str))
    {
        remove_assignment(ctx, id).await?;
        info!(object = %format!("{}/{}", rd.namespace().unwrap_or_default(), rd.name_any()), assignment = %id, "removed role assignment");
    }
    // The custom role the status names, and the one the spec names (it may have been defined before a failure
    // kept the assignment from being made).
    let ns = rd.namespace().unwrap_or_default();
    let mut guids: Vec<(String, Option<String>)> = vec![];
    if let Some(g) = our_custom_role(ctx, rd, &status) {
        guids.push((g, status.role_definition_id.clone()));
    }
    if let Some(c) = &rd.spec.role.custom {
        let g = naming::custom_role_guid(&ctx.cluster_id, &ns, &c.role_name);
        if !guids.iter().any(|(have, _)| *have == g) {
            guids.push((g, None));
        }
    }
    for (guid, id) in guids {
        remove_custom_role_if_unused(rd, ctx, &guid, id.as_deref()).await?;
    }
    Ok(Action::await_change())
}

async fn write_status(
    rd: &RoleDelegation,
    ctx: &Context,
    status: RoleDelegationStatus,
) -> Result<(), Error> {
    // Fields that a change can clear are sent as null, so that the merge patch removes them.
    reconcile::patch_status(
        ctx,
        rd,
        rd.status.as_ref(),
        &status,
        &[
            "roleAssignmentId",
            "preExisting",
            "pendingRemoval",
            "policy",
            "waitingForPrincipalSince",
            "roleDefinitionId",
            "roleName",
            "principalId",
        ],
    )
    .await?;
    Ok(())
}

fn now() -> Time {
    Time(Timestamp::now())
}
