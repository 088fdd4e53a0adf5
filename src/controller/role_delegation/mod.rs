//! The RoleDelegation controller: check the guardrail, find the principal and the role, PUT the assignment on
//! its deterministic name, ride out principal replication, replace on change, repair drift, remove on delete.
//!
//! Nothing is kept in memory but a cache of role definitions: the assignment is found again by its name (a
//! UUIDv5 of the owner (cluster, namespace, object) and of scope, role and principal), a custom role by its
//! GUID (a UUIDv5 of cluster, namespace and role name), and what was granted before by the object's status.
//!
//! Azure allows one assignment per (scope, role, principal). The owner in the name keeps one delegation from
//! ever PUTting over, or deleting, another's: the second delegation of a grant gets ARM's 409, and then a
//! Conflict naming the delegation that holds it, or, if no delegation of this cluster does, records the
//! assignment as pre-existing (never removed). An assignment under the legacy name (the grant alone, made by
//! earlier versions) is kept by the delegation whose status records it; if several do, the oldest holds it,
//! and none removes it while another still records it.

pub mod plan;
pub mod wiring;

use std::{sync::Arc, time::Duration};

use k8s_openapi::{api::core::v1::Namespace, jiff::Timestamp};
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
    Context,
    claims::{self, Claimant},
    clock, drift, failure, naming,
    policy::{
        self, Decision, RoleAsked,
        grants::{AllowedBefore, PrincipalAsked},
    },
    publish,
};
use crate::{
    api::{
        DelegationPolicy, DeletionPolicy, RoleDelegation, RoleDelegationStatus, ServicePrincipal,
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
    /// Another delegation of this cluster holds the assignment of the same grant.
    #[error("{0}")]
    Conflict(String),
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
            Error::Conflict(_) => "Conflict",
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
            Error::Azure(e) => failure::azure_retry(e),
            Error::PrincipalReplicating { retry, .. } => *retry,
            // The ServicePrincipal and policy watches bring these back as soon as something changes.
            Error::ServicePrincipalNotFound(_)
            | Error::WaitingForServicePrincipal(_)
            | Error::DeniedByPolicy(_) => Duration::from_secs(600),
            // A resource or grant made in Azure has no watch here: look again now and then. Nor does the
            // deletion of the delegation that holds a conflicting grant.
            Error::ScopeNotFound(_) | Error::AuthorizationFailed(_) | Error::Conflict(_) => {
                Duration::from_secs(120)
            }
            Error::PrincipalNotFound(_) => Duration::from_secs(900),
            Error::Invalid(_)
            | Error::RoleNotFound(_)
            | Error::RoleNotAssignable(_)
            | Error::CustomRoleConflict(_) => Duration::from_secs(300),
            Error::Kube(_) => Duration::from_secs(5),
        }
    }

    /// Whether only a change from outside (spec, policy, grant, an Azure resource) can help.
    fn stalled(&self) -> bool {
        match self {
            Error::Azure(e) => failure::azure_stalled(e),
            Error::Invalid(_)
            | Error::DeniedByPolicy(_)
            | Error::Conflict(_)
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
                clock::now_time(),
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
            let changed = err.record(&mut status.conditions, rd.metadata.generation);
            write_status(rd, ctx, status).await?;
            failure::announce(ctx, rd, &err, changed).await;
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
    let (asked, principal_asked) = asked(rd, &custom_scopes, ctx.operator_principal.as_deref())?;
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
        principal_asked,
        allowed_before(status),
    ) {
        Decision::Allowed { policy, violations } => {
            status.policy = Some(policy);
            status.policy_violations = Some(violations);
        }
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
            principal_asked,
            allowed_before(status),
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
    let own = naming::assignment_name(
        &ctx.cluster_id,
        &ns,
        &rd.name_any(),
        scope.as_str(),
        &role_guid,
        &principal_id,
    );
    // An assignment an earlier version made under the legacy name stays where it is (no replacement on
    // upgrade), held by the oldest delegation whose status records it; the others get a Conflict.
    let legacy = arm::assignment_name(scope.as_str(), &role_guid, &principal_id);
    let legacy_id = arm::assignment_id(scope.as_str(), &legacy);
    let holds_legacy = before.pre_existing != Some(true)
        && before
            .role_assignment_id
            .as_deref()
            .is_some_and(|id| id.eq_ignore_ascii_case(&legacy_id));
    if holds_legacy {
        let claimants: Vec<Claimant> = recording(ctx, &legacy_id)
            .iter()
            .map(|d| Claimant::of(&**d))
            .collect();
        if let Err(holder) = claims::check(&Claimant::of(rd), &claimants) {
            return Err(conflict(&holder, &legacy_id));
        }
    }
    let names = Names {
        own: &own,
        legacy: holds_legacy.then_some(legacy.as_str()),
    };
    let wanted = plan::Wanted {
        condition: rd.spec.condition.as_deref(),
        description: rd.spec.description.as_deref(),
    };
    let (assignment_id, pre_existing) = match assign(
        rd,
        ctx,
        &scope,
        names,
        &definition,
        &principal_id,
        &wanted,
        status,
    )
    .await?
    {
        Assigned::Ours { id, created } => {
            if created {
                let drift = before
                    .role_assignment_id
                    .as_deref()
                    .is_some_and(|known| known.eq_ignore_ascii_case(&id));
                let (reason, note) = if drift {
                    (
                        "RoleAssignmentRecreated",
                        "Recreated the role assignment, which had been removed in Azure",
                    )
                } else {
                    ("RoleAssigned", "Assigned the role")
                };
                info!(object = %format!("{ns}/{}", rd.name_any()), assignment = %id, reason, "role assignment");
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
            (id, false)
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
        let removed = remove_assignment(rd, ctx, &old).await?;
        status.pending_removal.remove(0);
        let note = match removed {
            Removed::Kept(why) => format!("Left the previous assignment {old}: {why}"),
            _ => format!("Removed the previous assignment {old}"),
        };
        publish(ctx, rd, EventType::Normal, "RoleAssignmentReplaced", &note).await;
    }
    if let Some(old_guid) = our_custom_role(ctx, rd, &before)
        && old_guid != role_guid
    {
        remove_custom_role_if_unused(rd, ctx, &old_guid, before.role_definition_id.as_deref())
            .await?;
    }
    Ok(())
}

/// What the spec asks the guardrail about: the role and the principal.
fn asked<'a>(
    rd: &'a RoleDelegation,
    custom_scopes: &'a [Scope],
    operator: Option<&str>,
) -> Result<(RoleAsked<'a>, PrincipalAsked<'a>), Error> {
    let role = &rd.spec.role;
    let asked = match (&role.name, &role.id, &role.custom) {
        (Some(name), _, _) => RoleAsked::Name(name),
        (_, Some(id), _) => RoleAsked::Id(arm::definition_guid(id)),
        (_, _, Some(custom)) => RoleAsked::Custom {
            role_name: &custom.role_name,
            actions: &custom.actions,
            not_actions: &custom.not_actions,
            data_actions: &custom.data_actions,
            assignable_scopes: custom_scopes,
        },
        _ => {
            return Err(Error::Invalid(
                "spec.role: one of name, id and custom must be set".into(),
            ));
        }
    };
    // principalId first, as `principal` reads it: the guardrail decides about the principal that gets the role.
    if rd.spec.principal_id.is_none() && rd.spec.principal_ref.is_none() {
        return Err(Error::Invalid(
            "spec: one of principalRef and principalId must be set".into(),
        ));
    }
    let principal = PrincipalAsked::of(rd.spec.principal_id.as_deref(), operator);
    Ok((asked, principal))
}

fn allowed_before(status: &RoleDelegationStatus) -> Option<AllowedBefore<'_>> {
    status.policy.as_deref().map(|policy| AllowedBefore {
        policy,
        violations: status.policy_violations,
    })
}

/// Why a delegation deleted with deletionPolicy Orphan may not leave its assignment behind: None when a policy
/// still allows it (as the spec asks: a spec that cannot be decided is not allowed).
fn orphan_denied(
    rd: &RoleDelegation,
    policies: &[Arc<DelegationPolicy>],
    labels: &std::collections::BTreeMap<String, String>,
    status: &RoleDelegationStatus,
    operator: Option<&str>,
) -> Option<String> {
    let scope = match Scope::parse(&rd.spec.scope) {
        Ok(s) => s,
        Err(e) => return Some(format!("spec.scope: {e}")),
    };
    let custom_scopes = match &rd.spec.role.custom {
        Some(custom) => match plan::custom_scopes(custom, &scope) {
            Ok(s) => s,
            Err(e) => return Some(e),
        },
        None => vec![],
    };
    let (role, principal) = match asked(rd, &custom_scopes, operator) {
        Ok(a) => a,
        Err(e) => return Some(e.to_string()),
    };
    match policy::decide(
        policies,
        &rd.namespace().unwrap_or_default(),
        labels,
        &scope,
        role,
        principal,
        allowed_before(status),
    ) {
        Decision::Allowed { .. } => None,
        Decision::Denied { message, .. } => Some(message),
    }
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
    let removed = remove_assignment(rd, ctx, &id).await?;
    if let Some(guid) = our_custom_role(ctx, rd, status) {
        remove_custom_role_if_unused(rd, ctx, &guid, status.role_definition_id.as_deref()).await?;
    }
    let note = match &removed {
        // A shared legacy assignment another delegation still holds: this one lets go of it.
        Removed::Kept(why) => format!("Gave up assignment {id} (left in Azure: {why}): {message}"),
        _ => format!("Removed assignment {id}: {message}"),
    };
    publish(ctx, rd, EventType::Warning, "Revoked", &note).await;
    status.role_assignment_id = None;
    status.pre_existing = None;
    status.policy = None;
    status.policy_violations = None;
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
    /// The operator's assignment for this delegation, by its id; `created` when this reconcile PUT it.
    Ours { id: String, created: bool },
    /// The same grant exists under another name and no delegation of this cluster holds it: someone else's,
    /// recorded and never removed.
    PreExisting(String),
}

/// The names this delegation's assignment may have: its own, and the legacy one when its status records that
/// (and it holds the claim).
#[derive(Clone, Copy)]
struct Names<'a> {
    own: &'a str,
    legacy: Option<&'a str>,
}

/// Makes sure the grant exists: reads first, PUTs only what is missing or different, and only under a name
/// this delegation holds.
#[allow(clippy::too_many_arguments)]
async fn assign(
    rd: &RoleDelegation,
    ctx: &Context,
    scope: &Scope,
    names: Names<'_>,
    definition: &RoleDefinition,
    principal_id: &str,
    wanted: &plan::Wanted<'_>,
    status: &mut RoleDelegationStatus,
) -> Result<Assigned, Error> {
    let role_guid = arm::definition_guid(&definition.id);
    // A grant recorded as someone else's: as long as it stands, and no delegation of this cluster turns out to
    // hold it (two created at once: the other's status came after this one's 409), there is nothing to do.
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
        if let Some(holder) = holder_of(ctx, rd, scope, &found) {
            return Err(conflict(&holder, &found.id));
        }
        return Ok(Assigned::PreExisting(found.id));
    }
    let mut name = names.legacy.unwrap_or(names.own);
    let owner = || drift::Owner::RoleDelegation(ObjectRef::from_obj(rd));
    // The same assignment as when this spec was last Ready, and its subscription's listing has seen no
    // change to it since: nothing to read.
    let known = arm::assignment_id(scope.as_str(), name);
    if status.pre_existing != Some(true)
        && status.observed_generation == rd.metadata.generation
        && conditions::is_true(&status.conditions, conditions::READY)
        && status
            .role_assignment_id
            .as_deref()
            .is_some_and(|recorded| recorded.eq_ignore_ascii_case(&known))
        && ctx.drift.fresh(drift::Source::Arm, &[&known])
    {
        return Ok(Assigned::Ours {
            id: known,
            created: false,
        });
    }
    let started = tokio::time::Instant::now();
    let mut existing = ctx
        .arm
        .role_assignment(scope.as_str(), name)
        .await
        .map_err(at_scope)?;
    if existing.is_none() && names.legacy.is_some() {
        // The legacy assignment is gone: made again, it gets this delegation's own name.
        name = names.own;
        existing = ctx
            .arm
            .role_assignment(scope.as_str(), name)
            .await
            .map_err(at_scope)?;
    }
    let id = arm::assignment_id(scope.as_str(), name);
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
        return Ok(Assigned::Ours { id, created: false });
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
                id,
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
                Some(a) => match holder_of(ctx, rd, scope, &a) {
                    Some(holder) => Err(conflict(&holder, &a.id)),
                    None => Ok(Assigned::PreExisting(a.id)),
                },
                // Listed nowhere we can see: report ARM's answer rather than guess.
                None => Err(Error::Azure(e)),
            }
        }
        Err(e) if e.code() == "PrincipalNotFound" => {
            let since = status
                .waiting_for_principal_since
                .clone()
                .unwrap_or_else(clock::now_time);
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

/// What became of an assignment this delegation recorded.
enum Removed {
    Deleted,
    /// Not there any more.
    Gone,
    /// Left in Azure, and why: another delegation records it, or its name is not this delegation's.
    Kept(String),
}

/// Removes an assignment this delegation recorded, if it is this delegation's to remove: its name is derived
/// from this object (or is the legacy name of its grant) and no other delegation of this cluster records it.
/// A status is not proof of ownership (it can be written by whoever may write the status subresource), the
/// name is. One already gone is fine.
async fn remove_assignment(rd: &RoleDelegation, ctx: &Context, id: &str) -> Result<Removed, Error> {
    let Some((scope, name)) = arm::split_assignment_id(id) else {
        warn!(id, "not a role assignment id; nothing removed");
        return Ok(Removed::Kept("not a role assignment id".into()));
    };
    if let Some(other) = recording(ctx, id).iter().find(|d| d.uid() != rd.uid()) {
        let why = format!("{} records it too", Claimant::of(&**other));
        info!(id, reason = %why, "role assignment left in place");
        return Ok(Removed::Kept(why));
    }
    let Some(found) = ctx.arm.role_assignment(scope, name).await? else {
        ctx.drift.forget(&[id]);
        return Ok(Removed::Gone);
    };
    let p = &found.properties;
    let role = arm::definition_guid(&p.role_definition_id);
    let own = naming::assignment_name(
        &ctx.cluster_id,
        &rd.namespace().unwrap_or_default(),
        &rd.name_any(),
        scope,
        role,
        &p.principal_id,
    );
    let legacy = arm::assignment_name(scope, role, &p.principal_id);
    if !(name.eq_ignore_ascii_case(&own) || name.eq_ignore_ascii_case(&legacy)) {
        let why = "its name is not this delegation's".to_string();
        warn!(
            id,
            "role assignment recorded in status is not this delegation's; left in place"
        );
        return Ok(Removed::Kept(why));
    }
    ctx.arm.delete_role_assignment(scope, name).await?;
    ctx.drift.forget(&[id]);
    Ok(Removed::Deleted)
}

/// The delegations of this cluster whose status records `id` as their own (not as pre-existing).
fn recording(ctx: &Context, id: &str) -> Vec<Arc<RoleDelegation>> {
    ctx.claims
        .delegations()
        .into_iter()
        .filter(|d| {
            d.status.as_ref().is_some_and(|s| {
                s.pre_existing != Some(true)
                    && s.role_assignment_id
                        .as_deref()
                        .is_some_and(|r| r.eq_ignore_ascii_case(id))
            })
        })
        .collect()
}

/// The other delegation of this cluster that holds `found` (its status records it, or its name is derived
/// from that delegation, whose status may not be written yet); the oldest if several.
fn holder_of(
    ctx: &Context,
    rd: &RoleDelegation,
    scope: &Scope,
    found: &arm::RoleAssignment,
) -> Option<Claimant> {
    let p = &found.properties;
    let role = arm::definition_guid(&p.role_definition_id);
    ctx.claims
        .delegations()
        .into_iter()
        .filter(|d| d.uid() != rd.uid())
        .filter(|d| {
            let records = d.status.as_ref().is_some_and(|s| {
                s.pre_existing != Some(true)
                    && s.role_assignment_id
                        .as_deref()
                        .is_some_and(|r| r.eq_ignore_ascii_case(&found.id))
            });
            let named = naming::assignment_name(
                &ctx.cluster_id,
                &d.namespace().unwrap_or_default(),
                &d.name_any(),
                scope.as_str(),
                role,
                &p.principal_id,
            )
            .eq_ignore_ascii_case(&found.name);
            records || named
        })
        .map(|d| Claimant::of(&*d))
        .min_by(|a, b| (a.created, &a.namespace, &a.name).cmp(&(b.created, &b.namespace, &b.name)))
}

fn conflict(holder: &Claimant, id: &str) -> Error {
    Error::Conflict(format!(
        "spec.scope, spec.role and spec.principal: {holder} already holds the role assignment {id} of this \
         grant (Azure allows one per scope, role and principal); nothing was changed in Azure"
    ))
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
    let status = rd.status.clone().unwrap_or_default();
    if rd.spec.deletion_policy == DeletionPolicy::Orphan {
        // Orphan keeps only what a policy still allows: otherwise setting it and deleting the object would
        // leave in Azure, untracked, a grant the administrators took away.
        let labels = Api::<Namespace>::all(ctx.client.clone())
            .get_opt(&rd.namespace().unwrap_or_default())
            .await?
            .and_then(|n| n.metadata.labels)
            .unwrap_or_default();
        match orphan_denied(
            rd,
            &ctx.policies.state(),
            &labels,
            &status,
            ctx.operator_principal.as_deref(),
        ) {
            None => {
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
            Some(why) => {
                publish(
                    ctx,
                    rd,
                    EventType::Warning,
                    "OrphanRevoked",
                    &format!(
                        "deletionPolicy Orphan, but no DelegationPolicy allows this grant any more ({why}): the \
                         role assignment is removed"
                    ),
                )
                .await;
            }
        }
    }
    let current = status
        .role_assignment_id
        .as_deref()
        .filter(|_| status.pre_existing != Some(true));
    for id in current
        .into_iter()
        .chain(status.pending_removal.iter().map(String::as_str))
    {
        let removed = remove_assignment(rd, ctx, id).await?;
        if matches!(removed, Removed::Deleted) {
            info!(object = %format!("{}/{}", rd.namespace().unwrap_or_default(), rd.name_any()), assignment = %id, "removed role assignment");
        }
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
            "policyViolations",
            "waitingForPrincipalSince",
            "roleDefinitionId",
            "roleName",
            "principalId",
        ],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::policy::test_support::{labels, policy};

    const SUB: &str = "/subscriptions/11111111-2222-3333-4444-555555555555";
    const ACR_PULL: &str = "7f951dda-4ed3-4680-a7ca-43fe172d538d";
    const P: &str = "5a5a5a5a-0000-4000-8000-00000000b5b5";

    #[test]
    fn assignment_names_carry_the_owner_and_the_grant() {
        let rg = format!("{SUB}/resourceGroups/rg");
        let a = naming::assignment_name("c1", "team-a", "pull", &rg, ACR_PULL, P);
        assert_eq!(
            a,
            naming::assignment_name(
                "c1",
                "team-a",
                "pull",
                &format!("{}/", rg.to_uppercase()),
                &ACR_PULL.to_uppercase(),
                &P.to_uppercase()
            ),
            "found again whatever the case ARM echoes"
        );
        let others = [
            naming::assignment_name("c2", "team-a", "pull", &rg, ACR_PULL, P),
            naming::assignment_name("c1", "team-b", "pull", &rg, ACR_PULL, P),
            naming::assignment_name("c1", "team-a", "pull-2", &rg, ACR_PULL, P),
            naming::assignment_name("c1", "team-a", "pull", SUB, ACR_PULL, P),
            arm::assignment_name(&rg, ACR_PULL, P),
        ];
        for other in &others {
            assert_ne!(&a, other);
        }
        assert!(uuid::Uuid::parse_str(&a).is_ok(), "ARM wants a GUID");
        // The legacy formula is unchanged: assignments made before the upgrade are still recognised.
        assert_eq!(
            arm::assignment_name(&rg, ACR_PULL, P),
            arm::assignment_name(&rg.to_uppercase(), ACR_PULL, P)
        );
    }

    fn delegation(ns: &str, spec: serde_json::Value) -> RoleDelegation {
        let mut rd: RoleDelegation = serde_json::from_value(serde_json::json!({
            "apiVersion": "entra-operator.io/v1alpha1", "kind": "RoleDelegation",
            "metadata": {"name": "rd", "namespace": ns}, "spec": spec,
        }))
        .unwrap();
        rd.metadata.namespace = Some(ns.into());
        rd
    }

    #[test]
    fn orphan_keeps_only_what_a_policy_still_allows() {
        let rg = format!("{SUB}/resourceGroups/rg");
        let mut listing = policy("team", "a", &[&rg], &["Reader"]);
        listing.spec.principals = vec![P.into()];
        let ps = [Arc::new(listing)];
        let by_id = serde_json::json!({"principalId": P, "role": {"name": "Reader"}, "scope": rg, "deletionPolicy": "Orphan"});
        let own = serde_json::json!({"principalRef": {"name": "app"}, "role": {"name": "Reader"}, "scope": rg, "deletionPolicy": "Orphan"});
        let other_role = serde_json::json!({"principalRef": {"name": "app"}, "role": {"name": "Contributor"}, "scope": rg, "deletionPolicy": "Orphan"});
        let status = RoleDelegationStatus::default();
        // (spec, namespace labels, policies, left in Azure)
        let none: [Arc<DelegationPolicy>; 0] = [];
        let table: [(&serde_json::Value, &str, &[Arc<DelegationPolicy>], bool); 6] = [
            (&by_id, "a", &ps, true),
            (&own, "a", &ps, true),
            (&other_role, "a", &ps, false),
            // The namespace relabelled out of the policy, or the policy deleted.
            (&own, "b", &ps, false),
            (&own, "a", &none, false),
            (&by_id, "b", &ps, false),
        ];
        for (spec, team, policies, kept) in table {
            let rd = delegation("ns", spec.clone());
            let why = orphan_denied(&rd, policies, &labels(team), &status, None);
            assert_eq!(why.is_none(), kept, "{spec} in team {team}: {why:?}");
            if let Some(why) = why {
                assert!(
                    why.contains("spec.") || why.contains("no DelegationPolicy selects"),
                    "{why}"
                );
            }
        }
    }
}
