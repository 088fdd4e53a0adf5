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
//!
//! Each reconcile is gather -> plan -> act: `gather` reads into one plain struct, `plan` (pure, table-tested)
//! turns the spec, the status, what was gathered and the time into the status to record and the ordered steps,
//! and `act` runs the steps. The plan is asked again after each read it asks for (so a denied delegation reads
//! nothing from Azure) and after a step whose answer it needs (the custom role it defined, a PUT Azure refused).
//! `rules` and `ownership` are the pure rules the plan is made of.

mod act;
mod gather;
pub mod ownership;
pub mod plan;
pub mod rules;
pub mod wiring;

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, ResourceExt,
    runtime::{controller::Action, finalizer::Event as Finalized},
};

use crate::controller::reconcile;

use self::{
    act::Stop,
    plan::{Next, Plan, Refused, Role, Spec},
};
use super::{Context, clock, failure};
use crate::{
    api::{
        DeletionPolicy, RoleDelegation, RoleDelegationStatus,
        conditions::{self, Progress},
    },
    azure::error::{AzureError, ErrorClass},
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
            reconcile::write_status(ctx, rd, &status).await?;
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
            failure::report(ctx, rd, status, &err).await?;
            Err(err)
        }
    }
}

/// Gather, plan, act, until the plan is done: each round reads only what the plan asks for next, or feeds it
/// what the steps returned (the custom role defined, the PUT refused).
async fn converge(
    rd: &RoleDelegation,
    ctx: &Context,
    status: &mut RoleDelegationStatus,
) -> Result<(), Error> {
    let spec = Spec::of(rd)?;
    let mut g = gather::start(rd, ctx).await?;
    let mut put_error = None;
    loop {
        let Plan { steps, next } = plan::plan(&spec, status, &g, clock::now());
        match act::run(rd, ctx, steps, status).await {
            Ok(defined) => {
                if let Some(definition) = defined {
                    g.role = Some(Role::Found(definition));
                }
            }
            Err(Stop::Failed(e)) => return Err(e),
            Err(Stop::Put(e)) => {
                g.refused = Some(match e.code() {
                    "PrincipalNotFound" => Refused::PrincipalUnknown,
                    "RoleAssignmentExists" => Refused::Exists,
                    _ => return Err(at_scope(e)),
                });
                put_error = Some(e);
                continue;
            }
        }
        match next {
            Next::Done(result) => return result,
            Next::Again => {}
            Next::Read(need) => gather::more(&spec, status, ctx, &mut g, need).await?,
            Next::PutError => {
                return Err(Error::Azure(
                    put_error.expect("the plan reports the PUT's error only after one"),
                ));
            }
        }
    }
}

async fn cleanup(rd: &RoleDelegation, ctx: &Context) -> Result<Action, Error> {
    let status = rd.status.clone().unwrap_or_default();
    // Orphan keeps only what a policy still allows: otherwise setting it and deleting the object would leave in
    // Azure, untracked, a grant the administrators took away.
    let orphan_denied = if rd.spec.deletion_policy == DeletionPolicy::Orphan {
        let labels = Api::<Namespace>::all(ctx.client.clone())
            .get_opt(&rd.namespace().unwrap_or_default())
            .await?
            .and_then(|n| n.metadata.labels)
            .unwrap_or_default();
        plan::orphan_denied(
            rd,
            &ctx.policies.state(),
            &labels,
            &status,
            ctx.operator_principal.as_deref(),
        )
    } else {
        None
    };
    let steps = plan::cleanup(rd, &status, &ctx.cluster_id, orphan_denied);
    // Nothing is recorded on the way out: the object is going.
    let mut unrecorded = status;
    act::run(rd, ctx, steps, &mut unrecorded)
        .await
        .map_err(|stop| match stop {
            Stop::Failed(e) => e,
            Stop::Put(e) => Error::Azure(e),
        })?;
    Ok(Action::await_change())
}

impl reconcile::Status for RoleDelegationStatus {
    const CLEARED: &'static [&'static str] = &[
        "roleAssignmentId",
        "preExisting",
        "pendingRemoval",
        "policy",
        "policyViolations",
        "waitingForPrincipalSince",
        "roleDefinitionId",
        "roleName",
        "principalId",
    ];

    fn conditions_mut(
        &mut self,
    ) -> &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        &mut self.conditions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::DelegationPolicy,
        azure::scope::Scope,
        controller::{
            naming,
            policy::test_support::{labels, policy},
        },
    };

    const SUB: &str = "/subscriptions/11111111-2222-3333-4444-555555555555";
    const ACR_PULL: &str = "7f951dda-4ed3-4680-a7ca-43fe172d538d";
    const P: &str = "5a5a5a5a-0000-4000-8000-00000000b5b5";

    #[test]
    fn assignment_names_carry_the_owner_and_the_grant() {
        let p = |s: &str| Scope::parse(s).unwrap();
        let rg = p(&format!("{SUB}/resourceGroups/rg"));
        let a = naming::assignment_name("c1", "team-a", "pull", &rg, ACR_PULL, P);
        assert_eq!(
            a,
            naming::assignment_name(
                "c1",
                "team-a",
                "pull",
                &p(&format!("{}/", rg.as_str().to_uppercase())),
                &ACR_PULL.to_uppercase(),
                &P.to_uppercase()
            ),
            "found again whatever the case ARM echoes"
        );
        let others = [
            naming::assignment_name("c2", "team-a", "pull", &rg, ACR_PULL, P),
            naming::assignment_name("c1", "team-b", "pull", &rg, ACR_PULL, P),
            naming::assignment_name("c1", "team-a", "pull-2", &rg, ACR_PULL, P),
            naming::assignment_name("c1", "team-a", "pull", &p(SUB), ACR_PULL, P),
            naming::legacy_assignment_name(&rg, ACR_PULL, P),
        ];
        for other in &others {
            assert_ne!(&a, other);
        }
        assert!(uuid::Uuid::parse_str(&a).is_ok(), "ARM wants a GUID");
        // The legacy formula is unchanged: assignments made before the upgrade are still recognised.
        assert_eq!(
            naming::legacy_assignment_name(&rg, ACR_PULL, P),
            naming::legacy_assignment_name(&p(&rg.as_str().to_uppercase()), ACR_PULL, P)
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
            let why = plan::orphan_denied(&rd, policies, &labels(team), &status, None);
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
