//! The RoleDelegation controller's reads: the namespace's labels and the policies, the principal, the role, the
//! assignment, each only when the plan asks for it, into [`Gathered`]. No writes, and no reads the plan does not
//! need (a recorded assignment that the drift index vouches for is not read again).

use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, ResourceExt, api::ListParams};

use super::{
    Error, at_scope, ownership,
    plan::{self, Gathered, Need, Observed, Role, Settings, Spec},
    rules,
};
use crate::{
    api::{RoleDelegation, RoleDelegationStatus, ServicePrincipal, conditions},
    azure::scope::{RoleAssignmentId, RoleDefinitionId},
    controller::{Context, drift, naming},
};

/// The operator's settings, the policy inputs and the delegations of the cluster: what every plan starts from.
pub async fn start(rd: &RoleDelegation, ctx: &Context) -> Result<Gathered, Error> {
    let labels = Api::<Namespace>::all(ctx.client.clone())
        .get(&rd.namespace().unwrap_or_default())
        .await?
        .metadata
        .labels
        .unwrap_or_default();
    Ok(Gathered {
        settings: settings(ctx),
        labels,
        policies: ctx.policies.state(),
        delegations: ctx.claims.delegations(),
        ..Gathered::default()
    })
}

pub fn settings(ctx: &Context) -> Settings {
    Settings {
        cluster_id: ctx.cluster_id.clone(),
        tenant_id: ctx.tenant_id.clone(),
        operator: ctx.operator_principal.clone(),
        replication_window: ctx.principal_replication_window,
    }
}

/// Reads what the plan needs next.
pub async fn more(
    spec: &Spec<'_>,
    status: &RoleDelegationStatus,
    ctx: &Context,
    g: &mut Gathered,
    need: Need,
) -> Result<(), Error> {
    match need {
        Need::PrincipalAndRole => {
            g.principal = Some(principal(spec.rd, ctx).await?);
            g.role = Some(role(spec, ctx).await?);
        }
        Need::Assignment => g.assignment = Some(assignment(spec, status, ctx, g).await?),
        Need::SameGrant => {
            let principal = g.principal.as_deref().unwrap_or_default();
            g.same_grant = Some(
                ctx.arm
                    .role_assignments_of(&spec.scope, principal)
                    .await
                    .map_err(at_scope)?,
            );
        }
    }
    Ok(())
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
    // From the store: the ServicePrincipal watch brings this delegation back whenever what it reads of the
    // ServicePrincipal changes, so the API server need not be asked on every reconcile. A miss is asked of the
    // API server: at start-up the store may not have listed the ServicePrincipals yet, and "not found" would
    // be a false alarm on every delegation.
    let sp = match ctx.claims.service_principal(&ns, &reference.name) {
        Some(sp) => Some(sp),
        None => Api::<ServicePrincipal>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&reference.name)
            .await?
            .map(std::sync::Arc::new),
    };
    let Some(sp) = sp else {
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

/// The role definition as the scope sees it: found by name or id, or this namespace's custom role (read at its
/// home; when it is missing or differs, the namespace's delegations are listed to see whether another defines
/// it differently).
async fn role(spec: &Spec<'_>, ctx: &Context) -> Result<Role, Error> {
    let role = &spec.rd.spec.role;
    let scope = &spec.scope;
    if let Some(name) = &role.name {
        return ctx
            .roles
            .by_name(&ctx.arm, scope.as_str(), name)
            .await
            .map_err(at_scope)?
            .map(Role::Found)
            .ok_or_else(|| {
                Error::RoleNotFound(format!(
                    "spec.role.name: no role named '{name}' can be seen at {scope}"
                ))
            });
    }
    if let Some(id) = &spec.role_id {
        let guid = id.guid();
        return ctx
            .arm
            .role_definition(scope, guid)
            .await
            .map_err(at_scope)?
            .map(Role::Found)
            .ok_or_else(|| {
                Error::RoleNotFound(format!(
                    "spec.role.id: no role definition {guid} can be seen at {scope}"
                ))
            });
    }
    let custom = role.custom.as_ref().expect("checked by Spec::of");
    let guid = naming::custom_role_guid(&ctx.cluster_id, &spec.namespace, &custom.role_name);
    if let Some(existing) = ctx
        .arm
        .role_definition(&spec.custom_scopes[0], &guid)
        .await
        .map_err(at_scope)?
        && rules::custom_role_matches(&existing, custom, &spec.namespace, &spec.custom_scopes)
    {
        return Ok(Role::Found(existing));
    }
    let others = Api::<RoleDelegation>::namespaced(ctx.client.clone(), &spec.namespace)
        .list(&ListParams::default())
        .await?;
    Ok(Role::CustomToDefine {
        conflict: ownership::custom_role_conflict(spec, &others.items),
    })
}

/// The assignment: the recorded pre-existing one if it still stands; else nothing read when the drift index
/// vouches for the recorded one; else read under this delegation's name (the legacy one first while it holds it;
/// gone, the own one).
async fn assignment(
    spec: &Spec<'_>,
    status: &RoleDelegationStatus,
    ctx: &Context,
    g: &Gathered,
) -> Result<Observed, Error> {
    let (Some(principal), Some(Role::Found(definition))) = (&g.principal, &g.role) else {
        unreachable!("the plan asks for the assignment once it knows the principal and the role");
    };
    let role_guid = RoleDefinitionId::guid_of(&definition.id);
    // A grant recorded as someone else's: as long as it stands there is nothing to do (the plan still looks for
    // a delegation of this cluster that turns out to hold it).
    if status.pre_existing == Some(true)
        && let Some(recorded) = status
            .role_assignment_id
            .as_deref()
            .and_then(|id| RoleAssignmentId::parse(id).ok())
        && let Some(found) = ctx.arm.role_assignment(&recorded).await.map_err(at_scope)?
        && plan::pre_existing_stands(&found, &spec.scope, &role_guid, principal)
    {
        return Ok(Observed::PreExistingStands(found));
    }
    let wanted = plan::Wanted::of(spec, definition, principal);
    let names = plan::names(spec, status, g, &wanted)?;
    let known = RoleAssignmentId::new(spec.scope.clone(), plan::first_name(&names));
    if plan::may_skip_read(spec.rd, status, &known)
        && ctx.drift.fresh(drift::Source::Arm, &[&known.to_string()])
    {
        return Ok(Observed::Fresh);
    }
    let started = tokio::time::Instant::now();
    let mut name = plan::first_name(&names).to_string();
    let mut existing = ctx.arm.role_assignment(&known).await.map_err(at_scope)?;
    if existing.is_none() && names.legacy.is_some() {
        // The legacy assignment is gone: made again, it gets this delegation's own name.
        name = names.own.clone();
        let own = RoleAssignmentId::new(spec.scope.clone(), &name);
        existing = ctx.arm.role_assignment(&own).await.map_err(at_scope)?;
    }
    Ok(Observed::Read {
        name,
        existing,
        started,
    })
}
