//! The RoleDelegation controller's rules, without I/O: how long to keep waiting for a principal to replicate,
//! whether a role may be assigned at a scope, and whether what Azure holds is what the spec wants. The plan
//! (`plan.rs`) is made of them.

use std::time::Duration;

use crate::{
    api::role_delegation::CustomRole,
    azure::{
        arm::{Permission, RoleAssignment, RoleDefinition},
        scope::{RoleDefinitionId, Scope},
    },
};

/// The shortest and longest wait between attempts while a principal replicates.
const FIRST_RETRY: Duration = Duration::from_secs(2);
const LONGEST_RETRY: Duration = Duration::from_secs(300);

/// When to try again, `elapsed` after Azure first said the principal does not exist: half the time waited so
/// far (so attempts thin out geometrically, about 20 in the first hour), between 2 s and 5 min. None once the
/// window is over: then the delegation is Stalled.
pub fn replication_retry(elapsed: Duration, window: Duration) -> Option<Duration> {
    (elapsed < window).then(|| (elapsed / 2).clamp(FIRST_RETRY, LONGEST_RETRY))
}

/// Whether a role whose definition lists `assignable_scopes` may be assigned at `scope` ("/" is everywhere).
pub fn assignable_at(assignable_scopes: &[String], scope: &Scope) -> bool {
    assignable_scopes
        .iter()
        .any(|s| s.trim() == "/" || Scope::parse(s).is_ok_and(|allowed| allowed.contains(scope)))
}

/// The scopes a custom role is made assignable at: the spec's, or else the delegation's scope.
pub fn custom_scopes(custom: &CustomRole, scope: &Scope) -> Result<Vec<Scope>, String> {
    if custom.assignable_scopes.is_empty() {
        return Ok(vec![scope.clone()]);
    }
    custom
        .assignable_scopes
        .iter()
        .map(|s| Scope::parse(s).map_err(|e| format!("spec.role.custom.assignableScopes: {e}")))
        .collect()
}

/// The permission block a custom role defines.
pub fn custom_permission(custom: &CustomRole) -> Permission {
    Permission {
        actions: custom.actions.clone(),
        not_actions: custom.not_actions.clone(),
        data_actions: custom.data_actions.clone(),
        not_data_actions: custom.not_data_actions.clone(),
    }
}

/// Whether the definition in Azure is the custom role the spec describes (lists compared as sets, names and
/// scopes case-insensitively, as ARM compares them), so that an unchanged role is not written again.
pub fn custom_role_matches(
    existing: &RoleDefinition,
    custom: &CustomRole,
    namespace: &str,
    scopes: &[Scope],
) -> bool {
    let p = &existing.properties;
    let have = match p.permissions.as_slice() {
        [one] => one.clone(),
        [] => Permission::default(),
        _ => return false,
    };
    let want = custom_permission(custom);
    let have_scopes: Vec<String> = p
        .assignable_scopes
        .iter()
        .map(|s| {
            Scope::parse(s)
                .map(|s| s.to_string())
                .unwrap_or_else(|_| s.clone())
        })
        .collect();
    let want_scopes: Vec<String> = scopes.iter().map(Scope::to_string).collect();
    p.role_name == custom.role_name
        && p.description.as_deref().unwrap_or_default() == custom_description(custom, namespace)
        && set(&have.actions) == set(&want.actions)
        && set(&have.not_actions) == set(&want.not_actions)
        && set(&have.data_actions) == set(&want.data_actions)
        && set(&have.not_data_actions) == set(&want.not_data_actions)
        && set(&have_scopes) == set(&want_scopes)
}

/// Whether two delegations define a custom role the same way (apart from where it is assignable): lists as
/// sets, actions case-insensitively, as Azure compares them.
pub fn same_custom_role(a: &CustomRole, b: &CustomRole) -> bool {
    set(&a.actions) == set(&b.actions)
        && set(&a.not_actions) == set(&b.not_actions)
        && set(&a.data_actions) == set(&b.data_actions)
        && set(&a.not_data_actions) == set(&b.not_data_actions)
        && a.description == b.description
}

/// The description a custom role is defined with: the spec's, or one that says who defined it.
pub fn custom_description(custom: &CustomRole, namespace: &str) -> String {
    custom
        .description
        .clone()
        .unwrap_or_else(|| format!("Defined by entra-operator for namespace {namespace}"))
}

fn set(items: &[String]) -> Vec<String> {
    let mut v: Vec<String> = items.iter().map(|s| s.to_ascii_lowercase()).collect();
    v.sort();
    v.dedup();
    v
}

/// What the assignment should hold, beyond its name (which already fixes scope, role and principal).
pub struct Wanted<'a> {
    pub condition: Option<&'a str>,
    pub description: Option<&'a str>,
}

/// Whether an assignment under the operator's name grants what is wanted, so that nothing is written when
/// nothing differs.
pub fn assignment_matches(
    existing: &RoleAssignment,
    role_guid: &str,
    principal_id: &str,
    wanted: &Wanted,
) -> bool {
    let p = &existing.properties;
    RoleDefinitionId::guid_of(&p.role_definition_id).eq_ignore_ascii_case(role_guid)
        && p.principal_id.eq_ignore_ascii_case(principal_id)
        && p.condition.as_deref() == wanted.condition
        && p.description.as_deref() == wanted.description
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::arm::{RoleAssignmentProperties, RoleDefinitionProperties};

    const SUB: &str = "/subscriptions/11111111-2222-3333-4444-555555555555";

    #[test]
    fn replication_waits_grow_and_end_with_the_window() {
        let hour = Duration::from_secs(3600);
        let s = Duration::from_secs;
        assert_eq!(replication_retry(s(0), hour), Some(s(2)));
        assert_eq!(replication_retry(s(60), hour), Some(s(30)));
        assert_eq!(replication_retry(s(3000), hour), Some(s(300)));
        assert_eq!(replication_retry(hour, hour), None);
        // Attempts within the hour, stepping as the controller would: a few dozen, not thousands.
        let (mut t, mut n) = (s(0), 0);
        while let Some(d) = replication_retry(t, hour) {
            t += d;
            n += 1;
        }
        assert!((15..40).contains(&n), "{n} attempts");
    }

    #[test]
    fn assignability_follows_the_definitions_scopes() {
        let subnet = Scope::parse(&format!(
            "{SUB}/resourceGroups/rg-network/providers/Microsoft.Network/virtualNetworks/v/subnets/s"
        ))
        .unwrap();
        assert!(assignable_at(&["/".into()], &subnet));
        assert!(assignable_at(&[SUB.to_uppercase()], &subnet));
        assert!(assignable_at(
            &[format!("{SUB}/resourcegroups/RG-NETWORK")],
            &subnet
        ));
        assert!(!assignable_at(
            &[format!("{SUB}/resourceGroups/rg-disks")],
            &subnet
        ));
        assert!(!assignable_at(&[], &subnet));
    }

    fn custom() -> CustomRole {
        CustomRole {
            role_name: "disks".into(),
            description: Some("d".into()),
            actions: vec![
                "Microsoft.Compute/disks/read".into(),
                "Microsoft.Compute/disks/write".into(),
            ],
            not_actions: vec![],
            data_actions: vec![],
            not_data_actions: vec![],
            assignable_scopes: vec![],
        }
    }

    fn definition(actions: &[&str], scopes: &[&str]) -> RoleDefinition {
        RoleDefinition {
            id: "x".into(),
            name: "g".into(),
            properties: RoleDefinitionProperties {
                role_name: "disks".into(),
                role_type: "CustomRole".into(),
                description: Some("d".into()),
                permissions: vec![Permission {
                    actions: actions.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                }],
                assignable_scopes: scopes.iter().map(|s| s.to_string()).collect(),
            },
        }
    }

    #[test]
    fn custom_roles_compare_as_sets() {
        let rg = Scope::parse(&format!("{SUB}/resourceGroups/rg-disks")).unwrap();
        let scopes = custom_scopes(&custom(), &rg).unwrap();
        assert_eq!(scopes, vec![rg.clone()]);
        let same = definition(
            &[
                "microsoft.compute/disks/write",
                "Microsoft.Compute/disks/read",
            ],
            &[&format!("{SUB}/resourcegroups/rg-disks")],
        );
        assert!(custom_role_matches(&same, &custom(), "ns", &scopes));
        let fewer = definition(&["Microsoft.Compute/disks/read"], &[rg.as_str()]);
        assert!(!custom_role_matches(&fewer, &custom(), "ns", &scopes));
        let elsewhere = definition(
            &[
                "Microsoft.Compute/disks/read",
                "Microsoft.Compute/disks/write",
            ],
            &[SUB],
        );
        assert!(!custom_role_matches(&elsewhere, &custom(), "ns", &scopes));
        let mut undescribed = custom();
        undescribed.description = None;
        let mut described = same.clone();
        described.properties.description = Some(custom_description(&undescribed, "ns"));
        assert!(
            custom_role_matches(&described, &undescribed, "ns", &scopes),
            "the default description is what is compared"
        );
        let mut reordered = custom();
        reordered.actions.reverse();
        assert!(same_custom_role(&custom(), &reordered));
        let mut bad = custom();
        bad.assignable_scopes = vec!["/nope".into()];
        assert!(
            custom_scopes(&bad, &rg)
                .unwrap_err()
                .starts_with("spec.role.custom.assignableScopes")
        );
    }

    #[test]
    fn assignments_match_on_role_principal_condition_and_description() {
        let a = RoleAssignment {
            id: "id".into(),
            name: "n".into(),
            properties: RoleAssignmentProperties {
                role_definition_id: "/providers/Microsoft.Authorization/roleDefinitions/ABC".into(),
                principal_id: "P".into(),
                scope: SUB.into(),
                condition: None,
                description: Some("why".into()),
            },
        };
        let wanted = Wanted {
            condition: None,
            description: Some("why"),
        };
        assert!(assignment_matches(&a, "abc", "p", &wanted));
        assert!(!assignment_matches(&a, "abd", "p", &wanted));
        let conditioned = Wanted {
            condition: Some("@Resource[x] == 'y'"),
            description: Some("why"),
        };
        assert!(!assignment_matches(&a, "abc", "p", &conditioned));
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 1000,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        // Any elapsed time and any window (the window is a flag, the elapsed time comes from the status):
        // the wait is within its bounds, and there is none once the window is over.
        #[test]
        fn replication_retries_stay_within_bounds(
            elapsed in (0u64..=u64::MAX, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
            window in (0u64..=u64::MAX).prop_map(Duration::from_secs),
        ) {
            match replication_retry(elapsed, window) {
                Some(wait) => {
                    prop_assert!(elapsed < window);
                    prop_assert!((FIRST_RETRY..=LONGEST_RETRY).contains(&wait));
                }
                None => prop_assert!(elapsed >= window),
            }
        }

        // Whatever scopes Azure or the spec lists (admission checks the spec's, not what Azure returns), the
        // comparisons answer rather than panic.
        #[test]
        fn scopes_from_anywhere_are_compared_without_panics(
            listed in proptest::collection::vec("(/|/subscriptions/[0-9a-f-]{0,40}|/providers/[a-zA-Z./]{0,30}|[ -~]{0,40}|.{0,20})(/resourceGroups/[^/]{0,10})?(/providers/[A-Za-z.]{0,12}/[a-z]{0,5}/[^/]{0,5})?", 0..4),
        ) {
            let rg = Scope::parse(&format!("{SUB}/resourceGroups/rg")).unwrap();
            let _ = assignable_at(&listed, &rg);
            let mut role = custom();
            role.assignable_scopes = listed.clone();
            let _ = custom_scopes(&role, &rg);
            let mut existing = definition(&["Microsoft.Compute/disks/read"], &[]);
            existing.properties.assignable_scopes = listed;
            let _ = custom_role_matches(&existing, &custom(), "ns", &[rg]);
        }
    }
}
