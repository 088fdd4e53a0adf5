//! Role grants: whether a namespace may grant a role at a scope (RoleDelegation), decided from the
//! DelegationPolicies and the namespace's labels alone, before anything is sent to Azure. Pure: no I/O.

use std::{borrow::Borrow, collections::BTreeMap};

use kube::ResourceExt;

use super::{glob, selecting};
use crate::{
    api::delegation_policy::{DelegationPolicy, ViolationAction},
    azure::{arm::Permission, scope::Scope},
};

/// Roles that let their holder grant roles or take over what they are granted on; allowed only by name.
pub const PRIVILEGED: [(&str, &str); 3] = [
    ("Owner", "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"),
    (
        "User Access Administrator",
        "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",
    ),
    (
        "Role Based Access Control Administrator",
        "f58310d9-a9f6-439a-9e8d-f62e7b41a168",
    ),
];

/// The role a delegation asks for, as the spec says it (nothing looked up in Azure yet).
#[derive(Clone, Copy, Debug)]
pub enum RoleAsked<'a> {
    Name(&'a str),
    /// A definition GUID.
    Id(&'a str),
    /// The role as Azure defines it, once looked up: `must_be_named` when "*" does not cover it (it can assign
    /// roles, or it is a custom role this namespace did not define).
    Resolved {
        name: &'a str,
        guid: &'a str,
        must_be_named: bool,
    },
    /// A custom role as the spec defines it: its name, the actions and data actions it allows, the actions it
    /// takes away again, and the scopes it is made assignable at.
    Custom {
        role_name: &'a str,
        actions: &'a [String],
        not_actions: &'a [String],
        data_actions: &'a [String],
        assignable_scopes: &'a [Scope],
    },
}

/// Who receives the role.
#[derive(Clone, Copy, Debug)]
pub enum PrincipalAsked<'a> {
    /// A ServicePrincipal of the delegation's own namespace (spec.principalRef): the namespace's own
    /// application, always allowed.
    Own,
    /// Any principal of the tenant by object id (spec.principalId): only one the allowing policy lists.
    Id(&'a str),
    /// The operator's own identity, by its object id (spec.principalId): never, whatever a policy lists, since
    /// a tenant holding the operator's roles would hold every tenant's.
    Operator(&'a str),
}

impl<'a> PrincipalAsked<'a> {
    /// What spec.principalId (or, without it, a principalRef) asks for, given the operator's own object id.
    pub fn of(principal_id: Option<&'a str>, operator: Option<&str>) -> PrincipalAsked<'a> {
        match principal_id {
            Some(id) if operator.is_some_and(|o| o.eq_ignore_ascii_case(id)) => {
                PrincipalAsked::Operator(id)
            }
            Some(id) => PrincipalAsked::Id(id),
            None => PrincipalAsked::Own,
        }
    }
}

/// The policy that allowed a delegation last time, as its status recorded it.
#[derive(Clone, Copy, Debug)]
pub struct AllowedBefore<'a> {
    pub policy: &'a str,
    /// Its `violations` setting then: what counts once the policy itself is deleted (None: recorded by an
    /// operator that did not record it, taken as Report).
    pub violations: Option<ViolationAction>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by the named policy, whose `violations` setting is recorded so that deleting the policy still
    /// revokes when it said Revoke.
    Allowed {
        policy: String,
        violations: ViolationAction,
    },
    /// Denied; the message says why and names the field.
    Denied { message: String, revoke: bool },
}

/// Decides for a delegation in a namespace with `labels`. `allowed_before` is the policy that allowed it last
/// time (from its status): its `violations` setting counts even when it no longer selects the namespace, and
/// even when it no longer exists (then as recorded).
pub fn decide(
    policies: &[impl Borrow<DelegationPolicy>],
    namespace: &str,
    labels: &BTreeMap<String, String>,
    scope: &Scope,
    role: RoleAsked,
    principal: PrincipalAsked,
    allowed_before: Option<AllowedBefore>,
) -> Decision {
    let selecting = selecting(policies, labels);
    let mut reasons = vec![];
    let operator = matches!(principal, PrincipalAsked::Operator(_));
    if let PrincipalAsked::Operator(id) = principal {
        reasons.push(format!(
            "spec.principalId {id} is the operator's own identity, which is never granted a role for a \
             namespace (whatever a policy's principals list)"
        ));
    }
    for policy in selecting.iter().filter(|_| !operator) {
        match allows(policy, scope, role, principal) {
            Ok(()) => {
                return Decision::Allowed {
                    policy: policy.name_any(),
                    violations: policy.spec.violations,
                };
            }
            Err(why) => reasons.push(format!("{}: {why}", policy.name_any())),
        }
    }
    let message = if operator {
        reasons.join("; ")
    } else if selecting.is_empty() {
        format!(
            "no DelegationPolicy selects namespace {namespace}, so nothing may be granted from it"
        )
    } else {
        format!(
            "not allowed by any DelegationPolicy ({})",
            reasons.join("; ")
        )
    };
    // The policy that allowed it before decides as it is now; deleted, as it was when it allowed it (else
    // deleting a Revoke policy would be a way to keep what it no longer allows).
    let before = allowed_before.map(|b| {
        policies
            .iter()
            .map(Borrow::borrow)
            .find(|p| p.name_any() == b.policy)
            .map_or(b.violations.unwrap_or_default(), |p| p.spec.violations)
    });
    let revoke = selecting
        .iter()
        .map(|p| p.spec.violations)
        .chain(before)
        .any(|v| v == ViolationAction::Revoke);
    Decision::Denied { message, revoke }
}

/// Why one policy does not allow the delegation, naming the spec field.
fn allows(
    policy: &DelegationPolicy,
    scope: &Scope,
    role: RoleAsked,
    principal: PrincipalAsked,
) -> Result<(), String> {
    if !within(policy, scope) {
        return Err(format!("spec.scope {scope} is outside its scopes"));
    }
    let names = |want: &str| names(policy, want);
    match role {
        RoleAsked::Name(name) => name_listed(name, &names),
        RoleAsked::Id(guid) => id_listed(guid, &names),
        RoleAsked::Resolved {
            name,
            guid,
            must_be_named,
        } => resolved_listed(name, guid, must_be_named, &names),
        RoleAsked::Custom {
            role_name,
            actions,
            not_actions,
            data_actions,
            assignable_scopes,
        } => custom_allowed(
            policy,
            role_name,
            actions,
            not_actions,
            data_actions,
            assignable_scopes,
        ),
    }?;
    principal_listed(policy, principal)
}

/// Whether `scope` is at or below one of the policy's scopes (an entry that does not parse allows nothing).
fn within(policy: &DelegationPolicy, scope: &Scope) -> bool {
    policy
        .spec
        .scopes
        .iter()
        .filter_map(|allowed| Scope::parse(allowed).ok())
        .any(|allowed| allowed.contains(scope))
}

/// Whether the policy's roles list `want` (a name, a GUID or "*"), case-insensitively.
fn names(policy: &DelegationPolicy, want: &str) -> bool {
    policy
        .spec
        .roles
        .iter()
        .any(|r| r.eq_ignore_ascii_case(want))
}

/// A built-in role asked for by name: a privileged one only by its own name or GUID, any other also by "*".
fn name_listed(name: &str, names: &impl Fn(&str) -> bool) -> Result<(), String> {
    let privileged = PRIVILEGED
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name));
    listed(name, privileged, names).map_err(|privileged| match privileged {
        Some(_) => format!("spec.role.name '{name}' is privileged and must be named in its roles"),
        None => format!("spec.role.name '{name}' is not in its roles"),
    })
}

/// A role asked for by definition GUID: as by name, a privileged one only when named.
fn id_listed(guid: &str, names: &impl Fn(&str) -> bool) -> Result<(), String> {
    let privileged = PRIVILEGED
        .iter()
        .find(|(_, g)| g.eq_ignore_ascii_case(guid));
    listed(guid, privileged, names).map_err(|privileged| match privileged {
        Some((n, _)) => {
            format!("spec.role.id {guid} ({n}) is privileged and must be named in its roles")
        }
        None => format!("spec.role.id {guid} is not in its roles"),
    })
}

/// Whether a role asked for as `asked` is listed: a privileged one (its name and GUID) only by either, any
/// other also by "*". Err carries which privileged role it is, if any, for the message.
fn listed<'a>(
    asked: &str,
    privileged: Option<&'a (&'static str, &'static str)>,
    names: &impl Fn(&str) -> bool,
) -> Result<(), Option<&'a (&'static str, &'static str)>> {
    let listed = match privileged {
        Some((n, guid)) => names(n) || names(guid),
        None => names(asked) || names("*"),
    };
    if listed { Ok(()) } else { Err(privileged) }
}

/// The role as Azure defines it: "*" covers it only when it need not be named.
fn resolved_listed(
    name: &str,
    guid: &str,
    must_be_named: bool,
    names: &impl Fn(&str) -> bool,
) -> Result<(), String> {
    if names(name) || names(guid) || (!must_be_named && names("*")) {
        return Ok(());
    }
    Err(if must_be_named {
        format!(
            "spec.role '{name}' can assign roles or is a custom role of someone else, so it must be \
             named in its roles"
        )
    } else {
        format!("spec.role '{name}' is not in its roles")
    })
}

/// A custom role as the spec defines it: every action within the policy's patterns, assignable only within
/// its scopes, and named in its roles if its actions add up to the right to assign roles.
fn custom_allowed(
    policy: &DelegationPolicy,
    role_name: &str,
    actions: &[String],
    not_actions: &[String],
    data_actions: &[String],
    assignable_scopes: &[Scope],
) -> Result<(), String> {
    let Some(custom) = &policy.spec.custom_roles else {
        return Err("spec.role.custom: it allows no custom roles".into());
    };
    let allowed = |action: &str| custom.allowed_actions.iter().any(|p| glob(p, action));
    if let Some(a) = actions.iter().chain(data_actions).find(|a| !allowed(a)) {
        return Err(format!(
            "spec.role.custom action '{a}' matches none of its customRoles.allowedActions"
        ));
    }
    if let Some(s) = assignable_scopes.iter().find(|s| !within(policy, s)) {
        return Err(format!(
            "spec.role.custom.assignableScopes {s} is outside its scopes"
        ));
    }
    // Actions allowed by pattern can still add up to the right to assign roles, which is the right to
    // everything: as with built-in roles, only a policy that names the role allows that.
    let permission = Permission {
        actions: actions.to_vec(),
        not_actions: not_actions.to_vec(),
        ..Default::default()
    };
    if can_assign_roles(std::slice::from_ref(&permission)) && !names(policy, role_name) {
        return Err(format!(
            "spec.role.custom '{role_name}' can assign roles (its actions cover \
             Microsoft.Authorization/roleAssignments/write), so it must be named in its roles"
        ));
    }
    Ok(())
}

/// A principal given by object id must be listed in the policy's principals; the namespace's own is allowed.
fn principal_listed(policy: &DelegationPolicy, principal: PrincipalAsked) -> Result<(), String> {
    if let PrincipalAsked::Id(id) = principal
        && !policy
            .spec
            .principals
            .iter()
            .any(|p| p.eq_ignore_ascii_case(id))
    {
        return Err(format!("spec.principalId {id} is not in its principals"));
    }
    Ok(())
}

/// Whether a role with these permissions can write role assignments (and so grant itself anything): an action
/// pattern covers `Microsoft.Authorization/roleAssignments/write` and no notActions entry of its block takes it
/// away. Owner, User Access Administrator and RBAC Administrator can; Contributor cannot.
pub fn can_assign_roles(permissions: &[Permission]) -> bool {
    const WRITE: &str = "Microsoft.Authorization/roleAssignments/write";
    permissions.iter().any(|p| {
        p.actions.iter().any(|a| glob(a, WRITE)) && !p.not_actions.iter().any(|n| glob(n, WRITE))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::delegation_policy::CustomRolePolicy;
    use crate::controller::policy::test_support::{labels, policy};

    const SUB: &str = "/subscriptions/11111111-2222-3333-4444-555555555555";

    fn scope(s: &str) -> Scope {
        Scope::parse(&format!("{SUB}{s}")).unwrap()
    }

    #[test]
    fn nothing_is_granted_without_a_selecting_policy() {
        let p = [policy("a", "a", &[SUB], &["*"])];
        let d = decide(
            &p,
            "ns-b",
            &labels("b"),
            &scope(""),
            RoleAsked::Name("Reader"),
            PrincipalAsked::Own,
            None,
        );
        assert!(
            matches!(&d, Decision::Denied { message, revoke: false } if message.contains("no DelegationPolicy selects namespace ns-b")),
            "{d:?}"
        );
        let none: [DelegationPolicy; 0] = [];
        assert!(matches!(
            decide(
                &none,
                "ns",
                &labels("a"),
                &scope(""),
                RoleAsked::Name("Reader"),
                PrincipalAsked::Own,
                None
            ),
            Decision::Denied { .. }
        ));
    }

    #[test]
    fn scope_and_role_must_both_be_allowed_by_the_same_policy() {
        let p = [
            policy(
                "acr",
                "a",
                &[&format!("{SUB}/resourceGroups/rg-shared")],
                &["AcrPull"],
            ),
            policy(
                "net",
                "a",
                &[&format!("{SUB}/resourceGroups/rg-network")],
                &["Network Contributor"],
            ),
        ];
        let acr =
            scope("/resourceGroups/RG-SHARED/providers/Microsoft.ContainerRegistry/registries/r");
        assert_eq!(
            decide(
                &p,
                "ns",
                &labels("a"),
                &acr,
                RoleAsked::Name("acrpull"),
                PrincipalAsked::Own,
                None
            ),
            Decision::Allowed {
                policy: "acr".into(),
                violations: ViolationAction::Report,
            }
        );
        let d = decide(
            &p,
            "ns",
            &labels("a"),
            &acr,
            RoleAsked::Name("Network Contributor"),
            PrincipalAsked::Own,
            None,
        );
        let Decision::Denied { message, .. } = d else {
            panic!("{d:?}")
        };
        assert!(
            message.contains("acr: spec.role.name 'Network Contributor' is not in its roles"),
            "{message}"
        );
        assert!(message.contains("net: spec.scope"), "{message}");
        assert!(matches!(
            decide(
                &p,
                "ns",
                &labels("a"),
                &scope("/resourceGroups/rg-shared2"),
                RoleAsked::Name("AcrPull"),
                PrincipalAsked::Own,
                None
            ),
            Decision::Denied { .. }
        ));
    }

    #[test]
    fn privileged_roles_need_to_be_named_even_with_a_wildcard() {
        let wildcard = [policy("any", "a", &[SUB], &["*"])];
        for (name, guid) in PRIVILEGED {
            for asked in [RoleAsked::Name(name), RoleAsked::Id(guid)] {
                let d = decide(
                    &wildcard,
                    "ns",
                    &labels("a"),
                    &scope(""),
                    asked,
                    PrincipalAsked::Own,
                    None,
                );
                assert!(
                    matches!(&d, Decision::Denied { message, .. } if message.contains("privileged")),
                    "{name}: {d:?}"
                );
            }
            let named = [policy("named", "a", &[SUB], &[name])];
            assert!(matches!(
                decide(
                    &named,
                    "ns",
                    &labels("a"),
                    &scope(""),
                    RoleAsked::Id(guid),
                    PrincipalAsked::Own,
                    None
                ),
                Decision::Allowed { .. }
            ));
        }
        assert!(matches!(
            decide(
                &wildcard,
                "ns",
                &labels("a"),
                &scope(""),
                RoleAsked::Name("Contributor"),
                PrincipalAsked::Own,
                None
            ),
            Decision::Allowed { .. }
        ));
    }

    #[test]
    fn custom_roles_need_every_action_allowed_and_scopes_inside() {
        let mut p = policy(
            "disks",
            "a",
            &[&format!("{SUB}/resourceGroups/rg-disks")],
            &[],
        );
        let actions = [
            "Microsoft.Compute/disks/read".to_string(),
            "Microsoft.Compute/disks/write".into(),
        ];
        let inside = [scope("/resourceGroups/rg-disks")];
        let outside = [scope("")];
        let custom = |actions, assignable_scopes| RoleAsked::Custom {
            role_name: "disks",
            actions,
            not_actions: &[],
            data_actions: &[],
            assignable_scopes,
        };
        let decide_one = |p: &DelegationPolicy, role| {
            decide(
                std::slice::from_ref(p),
                "ns",
                &labels("a"),
                &inside[0],
                role,
                PrincipalAsked::Own,
                None,
            )
        };
        let denied = |d: Decision, why: &str| {
            assert!(
                matches!(&d, Decision::Denied { message, .. } if message.contains(why)),
                "{why}: {d:?}"
            )
        };

        denied(
            decide_one(&p, custom(&actions, &inside)),
            "allows no custom roles",
        );
        p.spec.custom_roles = Some(CustomRolePolicy {
            allowed_actions: vec!["microsoft.compute/disks/*".into()],
        });
        assert!(matches!(
            decide_one(&p, custom(&actions, &inside)),
            Decision::Allowed { .. }
        ));
        denied(
            decide_one(&p, custom(&actions, &outside)),
            "assignableScopes",
        );
        let broad = ["Microsoft.Compute/*".to_string()];
        denied(
            decide_one(&p, custom(&broad, &inside)),
            "'Microsoft.Compute/*'",
        );
    }

    #[test]
    fn revocation_follows_the_selecting_or_the_previously_allowing_policy() {
        let mut strict = policy(
            "strict",
            "a",
            &[&format!("{SUB}/resourceGroups/x")],
            &["Reader"],
        );
        strict.spec.violations = ViolationAction::Revoke;
        let lenient = policy("lenient", "b", &[SUB], &["Reader"]);
        let ps = [strict, lenient];
        let asked = RoleAsked::Name("Contributor");
        assert!(matches!(
            decide(
                &ps,
                "ns",
                &labels("a"),
                &scope(""),
                asked,
                PrincipalAsked::Own,
                None
            ),
            Decision::Denied { revoke: true, .. }
        ));
        assert!(matches!(
            decide(
                &ps,
                "ns",
                &labels("b"),
                &scope(""),
                asked,
                PrincipalAsked::Own,
                None
            ),
            Decision::Denied { revoke: false, .. }
        ));
        // Moved out of the strict policy's namespaces: the policy that allowed it still decides.
        assert!(matches!(
            decide(
                &ps,
                "ns",
                &labels("c"),
                &scope(""),
                asked,
                PrincipalAsked::Own,
                Some(AllowedBefore {
                    policy: "strict",
                    violations: None
                })
            ),
            Decision::Denied { revoke: true, .. }
        ));
    }

    #[test]
    fn roles_that_can_assign_roles_must_be_named() {
        let perm = |actions: &[&str], not: &[&str]| Permission {
            actions: actions.iter().map(|s| s.to_string()).collect(),
            not_actions: not.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert!(can_assign_roles(&[perm(&["*"], &[])]), "Owner");
        assert!(
            can_assign_roles(&[perm(&["Microsoft.Authorization/*"], &[])]),
            "UAA"
        );
        assert!(
            !can_assign_roles(&[perm(
                &["*"],
                &[
                    "Microsoft.Authorization/*/Delete",
                    "Microsoft.Authorization/*/Write"
                ]
            )]),
            "Contributor"
        );
        assert!(!can_assign_roles(&[perm(&["*/read"], &[])]), "Reader");

        let wildcard = [policy("any", "a", &[SUB], &["*"])];
        let asked = |must_be_named| RoleAsked::Resolved {
            name: "Team Admin",
            guid: "0f",
            must_be_named,
        };
        assert!(matches!(
            decide(
                &wildcard,
                "ns",
                &labels("a"),
                &scope(""),
                asked(false),
                PrincipalAsked::Own,
                None
            ),
            Decision::Allowed { .. }
        ));
        let d = decide(
            &wildcard,
            "ns",
            &labels("a"),
            &scope(""),
            asked(true),
            PrincipalAsked::Own,
            None,
        );
        assert!(
            matches!(&d, Decision::Denied { message, .. } if message.contains("must be named")),
            "{d:?}"
        );
        let named = [policy("named", "a", &[SUB], &["team admin"])];
        assert!(matches!(
            decide(
                &named,
                "ns",
                &labels("a"),
                &scope(""),
                asked(true),
                PrincipalAsked::Own,
                None
            ),
            Decision::Allowed { .. }
        ));
    }

    #[test]
    fn custom_roles_that_can_assign_roles_must_be_named() {
        let sub = [scope("")];
        let everything = ["*".to_string()];
        let authorization = ["Microsoft.Authorization/*".to_string()];
        let write = ["Microsoft.Authorization/roleAssignments/write".to_string()];
        let disks = ["Microsoft.Compute/disks/read".to_string()];
        let no_authz_write = ["Microsoft.Authorization/*/Write".to_string()];
        let asked = |role_name, actions, not_actions| RoleAsked::Custom {
            role_name,
            actions,
            not_actions,
            data_actions: &[],
            assignable_scopes: &sub,
        };
        let mut anything = policy("anything", "a", &[SUB], &["*"]);
        anything.spec.custom_roles = Some(CustomRolePolicy {
            allowed_actions: vec!["*".into()],
        });
        let mut named = anything.clone();
        named.metadata.name = Some("named".into());
        named.spec.roles = vec!["Team Admin".into()];
        // (policy, role name, actions, notActions, allowed)
        type Row<'a> = (
            &'a DelegationPolicy,
            &'a str,
            &'a [String],
            &'a [String],
            bool,
        );
        let table: [Row; 8] = [
            (&anything, "team admin", &everything, &[], false),
            (&anything, "team admin", &authorization, &[], false),
            (&anything, "team admin", &write, &[], false),
            (&anything, "disk reader", &disks, &[], true),
            // notActions take the right away again: Contributor-like.
            (&anything, "team admin", &everything, &no_authz_write, true),
            (&named, "TEAM ADMIN", &everything, &[], true),
            (&named, "team admin", &write, &[], true),
            // "*" in roles does not name it.
            (&named, "other admin", &everything, &[], false),
        ];
        for (p, name, actions, not_actions, allowed) in table {
            let d = decide(
                std::slice::from_ref(p),
                "ns",
                &labels("a"),
                &sub[0],
                asked(name, actions, not_actions),
                PrincipalAsked::Own,
                None,
            );
            match (&d, allowed) {
                (Decision::Allowed { .. }, true) => {}
                (Decision::Denied { message, .. }, false) => assert!(
                    message.contains("spec.role.custom")
                        && message.contains("can assign roles")
                        && message.contains("must be named in its roles"),
                    "{message}"
                ),
                _ => panic!("{name} {actions:?} - {not_actions:?}: {d:?}"),
            }
        }
    }

    #[test]
    fn the_operators_own_identity_is_never_granted_even_where_listed() {
        const OPERATOR: &str = "0e0e0e0e-0000-4000-8000-0000000000e1";
        let mut p = policy("lists-everything", "a", &[SUB], &["*"]);
        p.spec.principals = vec![OPERATOR.into()];
        let asked = PrincipalAsked::of(Some(OPERATOR), Some(&OPERATOR.to_uppercase()));
        assert!(matches!(asked, PrincipalAsked::Operator(_)), "{asked:?}");
        let d = decide(
            std::slice::from_ref(&p),
            "ns",
            &labels("a"),
            &scope(""),
            RoleAsked::Name("Reader"),
            asked,
            None,
        );
        assert!(
            matches!(&d, Decision::Denied { message, .. }
                if message.starts_with(&format!("spec.principalId {OPERATOR} is the operator's own identity"))),
            "{d:?}"
        );
        // Anyone else the policy lists is allowed, and without a known operator id nothing is special.
        assert!(matches!(
            PrincipalAsked::of(Some(OPERATOR), None),
            PrincipalAsked::Id(_)
        ));
        assert!(matches!(
            PrincipalAsked::of(None, Some(OPERATOR)),
            PrincipalAsked::Own
        ));
        assert!(matches!(
            decide(
                std::slice::from_ref(&p),
                "ns",
                &labels("a"),
                &scope(""),
                RoleAsked::Name("Reader"),
                PrincipalAsked::of(Some(OPERATOR), Some("0f0f0f0f-0000-4000-8000-000000000000")),
                None,
            ),
            Decision::Allowed { .. }
        ));
    }

    #[test]
    fn a_principal_id_must_be_listed_by_the_policy_that_allows_the_grant() {
        const MI: &str = "0a0a0a0a-0000-4000-8000-00000000a1a1";
        const OTHER: &str = "0b0b0b0b-0000-4000-8000-00000000b2b2";
        let mut lists = policy(
            "lists",
            "a",
            &[&format!("{SUB}/resourceGroups/rg")],
            &["Reader"],
        );
        lists.spec.principals = vec![MI.to_uppercase()];
        // Lists nothing, but allows more: its scope and role do not make up for the other's principals.
        let broad = policy("broad", "a", &[SUB], &["*"]);
        let ps = [lists, broad];
        let rg = scope("/resourceGroups/rg");
        let go = |principal, at: &Scope, role| {
            decide(&ps, "ns", &labels("a"), at, role, principal, None)
        };
        let reader = RoleAsked::Name("Reader");
        // (principal, scope, role, allowed by)
        let table: [(PrincipalAsked, &Scope, RoleAsked, Option<&str>); 6] = [
            (PrincipalAsked::Id(MI), &rg, reader, Some("lists")),
            (PrincipalAsked::Own, &rg, reader, Some("broad")),
            (
                PrincipalAsked::Own,
                &rg,
                RoleAsked::Name("Contributor"),
                Some("broad"),
            ),
            (PrincipalAsked::Id(OTHER), &rg, reader, None),
            (
                PrincipalAsked::Id(MI),
                &rg,
                RoleAsked::Name("Contributor"),
                None,
            ),
            (PrincipalAsked::Id(MI), &scope(""), reader, None),
        ];
        for (principal, at, role, by) in table {
            let d = go(principal, at, role);
            match (&d, by) {
                (Decision::Allowed { policy, .. }, Some(by)) => assert_eq!(policy, by),
                (Decision::Denied { .. }, None) => {}
                _ => panic!("{principal:?} {at} {role:?}: {d:?}"),
            }
        }
        let Decision::Denied { message, .. } = go(PrincipalAsked::Id(OTHER), &rg, reader) else {
            unreachable!()
        };
        assert!(
            message.contains(&format!(
                "spec.principalId {OTHER} is not in its principals"
            )),
            "{message}"
        );
        let none: [DelegationPolicy; 0] = [];
        assert!(matches!(
            decide(
                &none,
                "ns",
                &labels("a"),
                &rg,
                reader,
                PrincipalAsked::Id(MI),
                None
            ),
            Decision::Denied { .. }
        ));
    }

    #[test]
    fn a_deleted_revoke_policy_still_revokes_what_it_allowed() {
        let mut strict = policy("strict", "a", &[SUB], &["Reader"]);
        strict.spec.violations = ViolationAction::Revoke;
        let asked = RoleAsked::Name("Reader");
        let d = decide(
            std::slice::from_ref(&strict),
            "ns",
            &labels("a"),
            &scope(""),
            asked,
            PrincipalAsked::Own,
            None,
        );
        assert_eq!(
            d,
            Decision::Allowed {
                policy: "strict".into(),
                violations: ViolationAction::Revoke
            },
            "the decision carries what the status records"
        );
        let gone: [DelegationPolicy; 0] = [];
        let before = |violations| {
            Some(AllowedBefore {
                policy: "strict",
                violations,
            })
        };
        // (policies now, recorded violations, revoke)
        let report = policy("strict", "a", &[], &[]);
        let table: [(&[DelegationPolicy], Option<ViolationAction>, bool); 5] = [
            (&gone, Some(ViolationAction::Revoke), true),
            (&gone, Some(ViolationAction::Report), false),
            // Recorded by an older operator: nothing to go by but Report.
            (&gone, None, false),
            // Still there: as it says now (changed to Report by its administrator).
            (
                std::slice::from_ref(&report),
                Some(ViolationAction::Revoke),
                false,
            ),
            (
                std::slice::from_ref(&strict),
                Some(ViolationAction::Report),
                true,
            ),
        ];
        for (policies, recorded, revoke) in table {
            let d = decide(
                policies,
                "ns",
                &labels("b"),
                &scope(""),
                RoleAsked::Name("Contributor"),
                PrincipalAsked::Own,
                before(recorded),
            );
            assert!(
                matches!(&d, Decision::Denied { revoke: r, .. } if *r == revoke),
                "{recorded:?} with {} policies: {d:?}",
                policies.len()
            );
        }
    }
}
