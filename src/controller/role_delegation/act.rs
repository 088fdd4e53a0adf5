//! The RoleDelegation controller's writes: each step of a plan, in order. Every step is idempotent (a PUT on a
//! deterministic name, a DELETE that takes "already gone" for success), so a reconcile that fails half-way is
//! simply run again.

use kube::{
    Api, ResourceExt,
    api::ListParams,
    runtime::{events::EventType, reflector::ObjectRef},
};
use tracing::{info, warn};

use super::{
    Error, at_scope, ownership,
    plan::{CustomRoleRef, Step},
};
use crate::{
    api::{RoleDelegation, RoleDelegationStatus},
    azure::{
        arm::{CustomRoleDefinition, Grant, RoleDefinition},
        error::AzureError,
        scope::RoleAssignmentId,
    },
    controller::{Context, claims::Claimant, drift, publish},
};

/// Why the steps stopped.
pub enum Stop {
    /// Azure refused the PUT of the assignment: the plan decides what that means.
    Put(AzureError),
    Failed(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Failed(e)
    }
}

/// Runs `steps` in order, adopting each status they record. Returns the custom role a step defined.
pub async fn run(
    rd: &RoleDelegation,
    ctx: &Context,
    steps: Vec<Step>,
    status: &mut RoleDelegationStatus,
) -> Result<Option<RoleDefinition>, Stop> {
    let mut defined = None;
    for step in steps {
        match step {
            Step::Record(next) => *status = *next,
            Step::Event {
                type_,
                reason,
                note,
            } => publish(ctx, rd, type_, reason, &note).await,
            Step::Assigned { id, reason, note } => {
                info!(object = %object(rd), assignment = %id, reason, "role assignment");
                publish(ctx, rd, EventType::Normal, reason, &note).await;
            }
            Step::DefineCustomRole {
                home,
                guid,
                role_name,
                description,
                permission,
                assignable_scopes,
            } => {
                let definition = CustomRoleDefinition {
                    role_name: &role_name,
                    description: &description,
                    permission,
                    assignable_scopes: &assignable_scopes,
                };
                defined = Some(define(rd, ctx, &home, &guid, &role_name, &definition).await?);
            }
            Step::PutAssignment {
                id,
                role_definition_id,
                principal_id,
                condition,
                condition_version,
                description,
            } => {
                let grant = Grant {
                    role_definition_id: &role_definition_id,
                    principal_id: &principal_id,
                    condition: condition.as_deref(),
                    condition_version,
                    description: description.as_deref(),
                };
                ctx.arm
                    .put_role_assignment(&id, &grant)
                    .await
                    .map_err(Stop::Put)?;
            }
            Step::Verified { id, grant, started } => {
                let owner = drift::Owner::RoleDelegation(ObjectRef::from_obj(rd));
                ctx.drift
                    .verified_grant(&id.to_string(), grant, started, owner);
            }
            Step::RemoveReplaced { id } => {
                let note = match remove_assignment(rd, ctx, &id).await? {
                    Removed::Kept(why) => format!("Left the previous assignment {id}: {why}"),
                    _ => format!("Removed the previous assignment {id}"),
                };
                publish(ctx, rd, EventType::Normal, "RoleAssignmentReplaced", &note).await;
            }
            Step::RemoveAssignment { id } => {
                if matches!(remove_assignment(rd, ctx, &id).await?, Removed::Deleted) {
                    info!(object = %object(rd), assignment = %id, "removed role assignment");
                }
            }
            Step::Revoke {
                id,
                custom_role,
                message,
            } => revoke(rd, ctx, &id, custom_role, &message).await?,
            Step::RemoveCustomRole(role) => remove_custom_role_if_unused(rd, ctx, &role).await?,
        }
    }
    Ok(defined)
}

fn object(rd: &RoleDelegation) -> String {
    format!("{}/{}", rd.namespace().unwrap_or_default(), rd.name_any())
}

/// PUTs the namespace's custom role and says so.
async fn define(
    rd: &RoleDelegation,
    ctx: &Context,
    home: &crate::azure::scope::Scope,
    guid: &str,
    role_name: &str,
    definition: &CustomRoleDefinition<'_>,
) -> Result<RoleDefinition, Error> {
    match ctx.arm.put_role_definition(home, guid, definition).await {
        Ok(defined) => {
            publish(
                ctx,
                rd,
                EventType::Normal,
                "CustomRoleDefined",
                &format!("Defined custom role '{role_name}' ({guid})"),
            )
            .await;
            Ok(defined)
        }
        Err(e) if e.code() == "RoleDefinitionWithSameNameExists" => {
            Err(Error::CustomRoleConflict(format!(
                "spec.role.custom.roleName: a role named '{role_name}' already exists in the tenant and is not this \
             namespace's; choose another name"
            )))
        }
        Err(e) => Err(at_scope(e)),
    }
}

/// Removes the delegation's assignment and its unused custom role, and says why.
async fn revoke(
    rd: &RoleDelegation,
    ctx: &Context,
    id: &str,
    custom_role: Option<CustomRoleRef>,
    message: &str,
) -> Result<(), Error> {
    let removed = remove_assignment(rd, ctx, id).await?;
    if let Some(role) = custom_role {
        remove_custom_role_if_unused(rd, ctx, &role).await?;
    }
    let note = match &removed {
        // A shared legacy assignment another delegation still holds: this one lets go of it.
        Removed::Kept(why) => format!("Gave up assignment {id} (left in Azure: {why}): {message}"),
        _ => format!("Removed assignment {id}: {message}"),
    };
    publish(ctx, rd, EventType::Warning, "Revoked", &note).await;
    Ok(())
}

/// What became of an assignment this delegation recorded.
enum Removed {
    Deleted,
    /// Not there any more.
    Gone,
    /// Left in Azure, and why: another delegation records it, or its name is not this delegation's.
    Kept(String),
}

/// Removes an assignment this delegation recorded, if it is this delegation's to remove
/// ([`ownership::ours_to_remove`]) and no other delegation of this cluster records it. One already gone is fine.
async fn remove_assignment(rd: &RoleDelegation, ctx: &Context, id: &str) -> Result<Removed, Error> {
    let Ok(parsed) = RoleAssignmentId::parse(id) else {
        warn!(id, "not a role assignment id; nothing removed");
        return Ok(Removed::Kept("not a role assignment id".into()));
    };
    let delegations = ctx.claims.delegations();
    if let Some(other) = ownership::recording(&delegations, &parsed)
        .into_iter()
        .find(|d| d.uid() != rd.uid())
    {
        let why = format!("{} records it too", Claimant::of(&**other));
        info!(id, reason = %why, "role assignment left in place");
        return Ok(Removed::Kept(why));
    }
    let Some(found) = ctx.arm.role_assignment(&parsed).await? else {
        ctx.drift.forget(&[id]);
        return Ok(Removed::Gone);
    };
    if !ownership::ours_to_remove(&ctx.cluster_id, rd, &parsed, &found) {
        warn!(
            id,
            "role assignment recorded in status is not this delegation's; left in place"
        );
        return Ok(Removed::Kept(
            "its name is not this delegation's".to_string(),
        ));
    }
    ctx.arm.delete_role_assignment(&parsed).await?;
    ctx.drift.forget(&[id]);
    Ok(Removed::Deleted)
}

/// Removes this namespace's custom role unless another live delegation in the namespace still uses it.
async fn remove_custom_role_if_unused(
    rd: &RoleDelegation,
    ctx: &Context,
    role: &CustomRoleRef,
) -> Result<(), Error> {
    let guid = &role.guid;
    let others =
        Api::<RoleDelegation>::namespaced(ctx.client.clone(), &rd.namespace().unwrap_or_default())
            .list(&ListParams::default())
            .await?;
    if ownership::custom_role_used(rd, &others.items, &ctx.cluster_id, guid) {
        return Ok(());
    }
    let Some(home) = ownership::custom_role_home(rd, role.definition_id.as_deref())? else {
        warn!(
            guid,
            "cannot tell where the custom role lives; left in place"
        );
        return Ok(());
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
