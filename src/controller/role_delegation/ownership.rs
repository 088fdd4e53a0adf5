//! Who holds what, without I/O: which delegation records or is named for an assignment (Azure allows one per
//! scope, role and principal, and a status is not proof of ownership, the derived name is), and which custom
//! role is this namespace's, where it lives and whether another delegation still uses it.

use std::sync::Arc;

use kube::ResourceExt;

use super::{
    Error,
    plan::{CustomRoleRef, Spec},
    rules,
};
use crate::{
    api::{RoleDelegation, RoleDelegationStatus},
    azure::{
        arm::RoleAssignment,
        scope::{RoleAssignmentId, RoleDefinitionId, Scope},
    },
    controller::{claims::Claimant, naming},
};

/// The custom role the status says was assigned, if it is this namespace's (derived from its name).
pub fn our_custom_role(
    cluster_id: &str,
    namespace: &str,
    status: &RoleDelegationStatus,
) -> Option<CustomRoleRef> {
    let (name, id) = (
        status.role_name.as_deref()?,
        status.role_definition_id.as_deref()?,
    );
    let guid = naming::custom_role_guid(cluster_id, namespace, name);
    (RoleDefinitionId::guid_of(id) == guid).then(|| CustomRoleRef {
        guid,
        definition_id: Some(id.to_string()),
    })
}

/// Where a custom role lives, to remove it: the scope of the subscription-level id the status recorded, else
/// the spec's first assignable scope. None when neither says.
pub fn custom_role_home(
    rd: &RoleDelegation,
    definition_id: Option<&str>,
) -> Result<Option<Scope>, Error> {
    let recorded = definition_id
        .and_then(|id| RoleDefinitionId::parse(id).ok())
        .and_then(|id| id.scope().cloned())
        .filter(|scope| scope.subscription().is_some());
    if let Some(home) = recorded {
        return Ok(Some(home));
    }
    let Some(custom) = rd.spec.role.custom.as_ref() else {
        return Ok(None);
    };
    let scope = Scope::parse(&rd.spec.scope).map_err(|e| Error::Invalid(e.to_string()))?;
    let scopes = rules::custom_scopes(custom, &scope).map_err(Error::Invalid)?;
    Ok(Some(scopes[0].clone()))
}

/// Whether another live delegation of the namespace (from `others`) uses the custom role `guid`.
pub fn custom_role_used(
    rd: &RoleDelegation,
    others: &[RoleDelegation],
    cluster_id: &str,
    guid: &str,
) -> bool {
    let ns = rd.namespace().unwrap_or_default();
    others.iter().any(|o| {
        o.uid() != rd.uid()
            && o.metadata.deletion_timestamp.is_none()
            && o.spec
                .role
                .custom
                .as_ref()
                .is_some_and(|c| naming::custom_role_guid(cluster_id, &ns, &c.role_name) == guid)
    })
}

/// Another live delegation of the namespace (from `others`) that defines the same custom role differently.
pub fn custom_role_conflict(spec: &Spec, others: &[RoleDelegation]) -> Option<String> {
    let custom = spec.rd.spec.role.custom.as_ref()?;
    others
        .iter()
        .find(|o| {
            o.uid() != spec.rd.uid()
                && o.metadata.deletion_timestamp.is_none()
                && o.spec.role.custom.as_ref().is_some_and(|c| {
                    let their_scopes = Scope::parse(&o.spec.scope)
                        .ok()
                        .and_then(|s| rules::custom_scopes(c, &s).ok());
                    c.role_name.eq_ignore_ascii_case(&custom.role_name)
                        && !(rules::same_custom_role(c, custom)
                            && their_scopes.as_deref() == Some(spec.custom_scopes.as_slice()))
                })
        })
        .map(|o| o.name_any())
}

/// The delegations whose status records `id` as their own (not as pre-existing).
pub fn recording<'a>(
    delegations: &'a [Arc<RoleDelegation>],
    id: &RoleAssignmentId,
) -> Vec<&'a Arc<RoleDelegation>> {
    delegations
        .iter()
        .filter(|d| {
            d.status.as_ref().is_some_and(|s| {
                s.pre_existing != Some(true)
                    && s.role_assignment_id.as_deref().is_some_and(|r| id.is(r))
            })
        })
        .collect()
}

/// The other delegation of this cluster that holds `found` (its status records it, or its name is derived
/// from that delegation, whose status may not be written yet); the oldest if several.
pub fn holder_of(
    delegations: &[Arc<RoleDelegation>],
    cluster_id: &str,
    rd: &RoleDelegation,
    scope: &Scope,
    found: &RoleAssignment,
) -> Option<Claimant> {
    let p = &found.properties;
    let role = RoleDefinitionId::guid_of(&p.role_definition_id);
    delegations
        .iter()
        .filter(|d| d.uid() != rd.uid())
        .filter(|d| {
            let records = d.status.as_ref().is_some_and(|s| {
                s.pre_existing != Some(true)
                    && s.role_assignment_id
                        .as_deref()
                        .is_some_and(|r| r.eq_ignore_ascii_case(&found.id))
            });
            let named = naming::assignment_name(
                cluster_id,
                &d.namespace().unwrap_or_default(),
                &d.name_any(),
                scope,
                &role,
                &p.principal_id,
            )
            .eq_ignore_ascii_case(&found.name);
            records || named
        })
        .map(|d| Claimant::of(&**d))
        .min_by(|a, b| (a.created, &a.namespace, &a.name).cmp(&(b.created, &b.namespace, &b.name)))
}

/// Whether the assignment `found` (read at `id`) is this delegation's to remove: its name is derived from this
/// object, or is the legacy name of its grant. A status is not proof of ownership (whoever may write the status
/// subresource can write it), the name is.
pub fn ours_to_remove(
    cluster_id: &str,
    rd: &RoleDelegation,
    id: &RoleAssignmentId,
    found: &RoleAssignment,
) -> bool {
    let p = &found.properties;
    let role = RoleDefinitionId::guid_of(&p.role_definition_id);
    let own = naming::assignment_name(
        cluster_id,
        &rd.namespace().unwrap_or_default(),
        &rd.name_any(),
        id.scope(),
        &role,
        &p.principal_id,
    );
    let legacy = naming::legacy_assignment_name(id.scope(), &role, &p.principal_id);
    id.name().eq_ignore_ascii_case(&own) || id.name().eq_ignore_ascii_case(&legacy)
}

pub fn conflict(holder: &Claimant, id: &str) -> Error {
    Error::Conflict(format!(
        "spec.scope, spec.role and spec.principal: {holder} already holds the role assignment {id} of this \
         grant (Azure allows one per scope, role and principal); nothing was changed in Azure"
    ))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::SignedDuration};
    use serde_json::json;

    use super::*;
    use crate::{
        api::RoleDelegationStatus,
        azure::arm::RoleAssignmentProperties,
        fixtures::{CLUSTER_ID, NAMESPACE, SUBSCRIPTION, role_delegation_with, t0},
    };

    const P: &str = "5a5a5a5a-0000-4000-8000-00000000b5b5";
    const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";

    fn rg() -> Scope {
        Scope::parse(&format!(
            "/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-team-a"
        ))
        .unwrap()
    }

    fn found(name: &str) -> (RoleAssignmentId, RoleAssignment) {
        let id = RoleAssignmentId::new(rg(), name);
        let a = RoleAssignment {
            id: id.to_string(),
            name: name.into(),
            properties: RoleAssignmentProperties {
                role_definition_id: format!(
                    "/providers/Microsoft.Authorization/roleDefinitions/{READER}"
                ),
                principal_id: P.into(),
                scope: rg().to_string(),
                condition: None,
                description: None,
            },
        };
        (id, a)
    }

    fn own_name(rd: &str) -> String {
        naming::assignment_name(CLUSTER_ID, NAMESPACE, rd, &rg(), READER, P)
    }

    /// A delegation named `name`, created `age_s` seconds after the fixtures' t0, whose status records `id`.
    fn recording(
        name: &str,
        age_s: i64,
        id: Option<&str>,
        pre_existing: bool,
    ) -> Arc<RoleDelegation> {
        let mut rd = role_delegation_with(name, json!({"principalId": P}));
        rd.metadata.creation_timestamp = Some(Time(t0() + SignedDuration::from_secs(age_s)));
        rd.status = Some(RoleDelegationStatus {
            role_assignment_id: id.map(str::to_string),
            pre_existing: pre_existing.then_some(true),
            ..RoleDelegationStatus::default()
        });
        Arc::new(rd)
    }

    #[test]
    fn only_a_name_derived_from_the_delegation_is_its_to_remove() {
        let rd = role_delegation_with("rd", json!({"principalId": P}));
        let legacy = naming::legacy_assignment_name(&rg(), READER, P);
        // (name, assignment name, removable)
        let cases = [
            ("its own name", own_name("rd"), true),
            (
                "its own name, upper case",
                own_name("rd").to_uppercase(),
                true,
            ),
            ("the legacy name of its grant", legacy, true),
            ("another delegation's name", own_name("other"), false),
            (
                "a name made outside the cluster",
                "0f0f0f0f-0000-4000-8000-000000000000".into(),
                false,
            ),
        ];
        for (case, name, removable) in cases {
            let (id, a) = found(&name);
            assert_eq!(
                ours_to_remove(CLUSTER_ID, &rd, &id, &a),
                removable,
                "{case}"
            );
        }
    }

    /// (name, delegations, holder)
    type HolderCase<'a> = (&'a str, Vec<Arc<RoleDelegation>>, Option<&'a str>);

    #[test]
    fn the_holder_of_a_grant_is_the_oldest_other_delegation_that_records_or_is_named_for_it() {
        let rd = role_delegation_with("rd", json!({"principalId": P}));
        let (id, theirs) = found(&own_name("b"));
        let text = id.to_string();
        let cases: [HolderCase; 6] = [
            ("nobody", vec![], None),
            (
                "named for another, status not written yet",
                vec![recording("b", 0, None, false)],
                Some("b"),
            ),
            (
                "recorded by another",
                vec![recording("c", 0, Some(&text), false)],
                Some("c"),
            ),
            (
                "recorded by another as pre-existing",
                vec![recording("c", 0, Some(&text), true)],
                None,
            ),
            (
                "recorded by itself",
                vec![recording("rd", 0, Some(&text), false)],
                None,
            ),
            (
                "two: the older",
                vec![
                    recording("c", 5, Some(&text), false),
                    recording("b", 1, None, false),
                ],
                Some("b"),
            ),
        ];
        for (case, delegations, holder) in cases {
            let got = holder_of(&delegations, CLUSTER_ID, &rd, &rg(), &theirs);
            assert_eq!(got.map(|c| c.name), holder.map(str::to_string), "{case}");
        }
    }

    #[test]
    fn a_custom_role_lives_where_its_id_says_else_at_the_specs_first_scope() {
        let sub = format!("/subscriptions/{SUBSCRIPTION}");
        let def =
            |scope: &str| format!("{scope}/providers/Microsoft.Authorization/roleDefinitions/g");
        let custom =
            json!({"role": {"name": null, "custom": {"roleName": "disks", "actions": ["a/b"]}}});
        let elsewhere = json!({"role": {"name": null, "custom": {"roleName": "disks", "actions": ["a/b"],
            "assignableScopes": [sub.clone()]}}});
        let mg = "/providers/Microsoft.Management/managementGroups/mg";
        // (name, spec, recorded definition id, home)
        let cases = [
            (
                "recorded in a subscription",
                custom.clone(),
                Some(def(&sub)),
                Some(sub.clone()),
            ),
            (
                "recorded in a resource group",
                custom.clone(),
                Some(def(rg().as_str())),
                Some(rg().to_string()),
            ),
            (
                "recorded at the tenant: the spec's scope",
                custom.clone(),
                Some(def("")),
                Some(rg().to_string()),
            ),
            (
                "recorded in a management group: the spec's",
                elsewhere.clone(),
                Some(def(mg)),
                Some(sub.clone()),
            ),
            (
                "not recorded: the spec's first assignable scope",
                elsewhere,
                None,
                Some(sub.clone()),
            ),
            (
                "not recorded and not custom: nowhere known",
                json!({}),
                None,
                None,
            ),
        ];
        for (case, spec, recorded, home) in cases {
            let rd = role_delegation_with("rd", spec);
            let got = custom_role_home(&rd, recorded.as_deref()).unwrap();
            assert_eq!(got.map(|s| s.to_string()), home, "{case}");
        }
    }

    #[test]
    fn a_custom_role_is_in_use_while_another_live_delegation_defines_it() {
        let custom = |name: &str, role: &str| {
            role_delegation_with(
                name,
                json!({"role": {"name": null, "custom": {"roleName": role, "actions": ["a/b"]}}}),
            )
        };
        let rd = custom("rd", "disks");
        let guid = naming::custom_role_guid(CLUSTER_ID, NAMESPACE, "disks");
        let mut going = custom("going", "disks");
        going.metadata.deletion_timestamp = Some(Time(t0()));
        // (name, the namespace's delegations, in use)
        let cases = [
            ("alone", vec![rd.clone()], false),
            (
                "another, the name in other case",
                vec![rd.clone(), custom("b", "DISKS")],
                true,
            ),
            ("another being deleted", vec![rd.clone(), going], false),
            ("another role", vec![rd.clone(), custom("b", "nets")], false),
            (
                "a built-in role",
                vec![rd.clone(), role_delegation_with("b", json!({}))],
                false,
            ),
        ];
        for (case, others, used) in cases {
            assert_eq!(
                custom_role_used(&rd, &others, CLUSTER_ID, &guid),
                used,
                "{case}"
            );
        }
    }
}
