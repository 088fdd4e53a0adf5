//! Table tests of the RoleDelegation plan: each case is a delegation, its status and what was gathered; each
//! asserts the steps in order, what comes next, and the status recorded.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::json;

use super::*;
use crate::{
    api::{
        DelegationPolicy, RoleDelegation, RoleDelegationStatus, conditions::READY,
        delegation_policy::ViolationAction,
    },
    azure::arm::{RoleAssignmentProperties, RoleDefinitionProperties},
    controller::reconcile::Failure,
    fixtures::{CLUSTER_ID, NAMESPACE, SUBSCRIPTION, delegation_policy, role_delegation_with, t0},
};

const P: &str = "5a5a5a5a-0000-4000-8000-00000000b5b5";
const OPERATOR: &str = "0e0e0e0e-0000-4000-8000-0000000000ee";
const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
const CONTRIBUTOR: &str = "b24988ac-6180-42a0-ab88-20f7382dd24c";
const FOREIGN: &str = "f0f0f0f0-0000-4000-8000-0000000000f0";

fn sub() -> String {
    format!("/subscriptions/{SUBSCRIPTION}")
}

fn rg() -> Scope {
    Scope::parse(&format!("{}/resourceGroups/rg-team-a", sub())).unwrap()
}

/// A built-in role as ARM returns it.
fn builtin(name: &str, guid: &str) -> RoleDefinition {
    RoleDefinition {
        id: format!(
            "{}/providers/Microsoft.Authorization/roleDefinitions/{guid}",
            sub()
        ),
        name: guid.into(),
        properties: RoleDefinitionProperties {
            role_name: name.into(),
            role_type: "BuiltInRole".into(),
            description: None,
            permissions: vec![],
            assignable_scopes: vec!["/".into()],
        },
    }
}

/// The id of delegation `rd`'s own assignment of `role` to P at the resource group.
fn own(rd: &str, role: &str) -> String {
    naming::assignment_id(CLUSTER_ID, NAMESPACE, rd, &rg(), role, P).to_string()
}

/// An assignment as ARM returns it.
fn assignment(id: &str, role: &str) -> RoleAssignment {
    let id = RoleAssignmentId::parse(id).unwrap();
    RoleAssignment {
        id: id.to_string(),
        name: id.name().into(),
        properties: RoleAssignmentProperties {
            role_definition_id: format!(
                "{}/providers/Microsoft.Authorization/roleDefinitions/{role}",
                sub()
            ),
            principal_id: P.into(),
            scope: id.scope().to_string(),
            condition: None,
            description: None,
        },
    }
}

/// A delegation of Reader (or `overrides`) to principal P at the resource group.
fn delegation(overrides: serde_json::Value) -> RoleDelegation {
    let mut spec = json!({"principalId": P});
    if let (Some(base), Some(more)) = (spec.as_object_mut(), overrides.as_object()) {
        base.extend(more.clone());
    }
    role_delegation_with("rd", spec)
}

fn policy(violations: &str, roles: &[&str]) -> DelegationPolicy {
    delegation_policy(
        "team-a",
        json!({"scopes": [sub()], "roles": roles, "principals": [P], "violations": violations,
               "customRoles": {"allowedActions": ["Microsoft.Compute/disks/*"]}}),
    )
}

/// What was gathered: the policy, and the principal, role and assignment when given.
fn gathered(
    policies: Vec<DelegationPolicy>,
    role: Option<Role>,
    observed: Option<Observed>,
) -> Gathered {
    Gathered {
        settings: Settings {
            cluster_id: CLUSTER_ID.into(),
            tenant_id: "tenant".into(),
            operator: Some(OPERATOR.into()),
            replication_window: Duration::from_secs(3600),
        },
        labels: BTreeMap::from([("team".into(), "a".into())]),
        policies: policies.into_iter().map(Arc::new).collect(),
        principal: role.is_some().then(|| P.to_string()),
        role,
        assignment: observed,
        ..Gathered::default()
    }
}

fn read(existing: Option<RoleAssignment>) -> Option<Observed> {
    Some(Observed::Read {
        name: existing
            .as_ref()
            .map_or_else(|| "unused".into(), |a| a.name.clone()),
        existing,
        started: tokio::time::Instant::now(),
    })
}

fn read_own(existing: Option<RoleAssignment>, role: &str) -> Option<Observed> {
    let id = RoleAssignmentId::parse(&own("rd", role)).unwrap();
    Some(Observed::Read {
        name: id.name().into(),
        existing,
        started: tokio::time::Instant::now(),
    })
}

/// A status as a Ready delegation of `role` left it.
fn holding(id: &str, role: &str, role_name: &str) -> RoleDelegationStatus {
    RoleDelegationStatus {
        role_assignment_id: Some(id.into()),
        role_definition_id: Some(format!(
            "{}/providers/Microsoft.Authorization/roleDefinitions/{role}",
            sub()
        )),
        role_name: Some(role_name.into()),
        principal_id: Some(P.into()),
        policy: Some("team-a".into()),
        policy_violations: Some(ViolationAction::Report),
        observed_generation: Some(1),
        conditions: vec![Condition {
            type_: READY.into(),
            status: "True".into(),
            reason: "Ready".into(),
            message: String::new(),
            last_transition_time: Time(t0()),
            observed_generation: Some(1),
        }],
        ..RoleDelegationStatus::default()
    }
}

/// The steps, one line each: what they do and to what.
fn render(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .map(|s| match s {
            // A removal is recorded before it is attempted, so that a failure does not forget it.
            Step::Record(s) if !s.pending_removal.is_empty() => {
                format!("record, pending removal {}", s.pending_removal.join(" "))
            }
            Step::Record(_) => "record".into(),
            Step::Event { reason, .. } => format!("event {reason}"),
            Step::Assigned { id, reason, .. } => format!("event {reason} {id}"),
            Step::DefineCustomRole { guid, home, .. } => format!("define {guid} at {home}"),
            Step::PutAssignment { id, .. } => format!("put {id}"),
            Step::Verified { id, .. } => format!("verified {id}"),
            Step::RemoveReplaced { id } => format!("remove replaced {id}"),
            Step::RemoveAssignment { id } => format!("remove {id}"),
            Step::Revoke { id, .. } => format!("revoke {id}"),
            Step::RemoveCustomRole(r) => format!("remove custom role {}", r.guid),
        })
        .collect()
}

fn render_next(next: &Next) -> String {
    match next {
        Next::Read(need) => format!("read {need:?}"),
        Next::Again => "again".into(),
        Next::Done(Ok(())) => "ready".into(),
        Next::Done(Err(e)) => format!("{} (stalled: {})", e.reason(), e.stalled()),
        Next::PutError => "the PUT's error".into(),
    }
}

/// The status the steps leave: the last one recorded, else the one the reconcile started with.
fn recorded(steps: &[Step], start: &RoleDelegationStatus) -> RoleDelegationStatus {
    steps
        .iter()
        .rev()
        .find_map(|s| match s {
            Step::Record(status) => Some((**status).clone()),
            _ => None,
        })
        .unwrap_or_else(|| start.clone())
}

struct Case {
    name: &'static str,
    rd: RoleDelegation,
    status: RoleDelegationStatus,
    g: Gathered,
    steps: Vec<String>,
    next: &'static str,
    /// What the recorded status must say.
    check: fn(&RoleDelegationStatus),
}

fn reader() -> Option<Role> {
    Some(Role::Found(builtin("Reader", READER)))
}

fn contributor() -> Option<Role> {
    Some(Role::Found(builtin("Contributor", CONTRIBUTOR)))
}

/// Someone else's assignment of the same grant.
fn foreign() -> String {
    format!(
        "{}/providers/Microsoft.Authorization/roleAssignments/{FOREIGN}",
        rg()
    )
}

fn fresh_and_steady() -> Vec<Case> {
    vec![
        Case {
            name: "a fresh delegation reads its principal and role once the guardrail allows it",
            rd: delegation(json!({})),
            status: RoleDelegationStatus::default(),
            g: gathered(vec![policy("Report", &["Reader"])], None, None),
            steps: vec!["record".into()],
            next: "read PrincipalAndRole",
            check: |s| assert_eq!(s.policy.as_deref(), Some("team-a")),
        },
        Case {
            name: "then reads the assignment",
            rd: delegation(json!({})),
            status: RoleDelegationStatus::default(),
            g: gathered(vec![policy("Report", &["Reader"])], reader(), None),
            steps: vec!["record".into()],
            next: "read Assignment",
            check: |s| assert_eq!(s.role_assignment_id, None),
        },
        Case {
            name: "a fresh create PUTs under its own name and says so",
            rd: delegation(json!({})),
            status: RoleDelegationStatus::default(),
            g: gathered(
                vec![policy("Report", &["Reader"])],
                reader(),
                read_own(None, READER),
            ),
            steps: vec![
                "record".into(),
                format!("put {}", own("rd", READER)),
                format!("verified {}", own("rd", READER)),
                format!("event RoleAssigned {}", own("rd", READER)),
                "record".into(),
            ],
            next: "ready",
            check: |s| {
                assert_eq!(
                    s.role_assignment_id.as_deref(),
                    Some(own("rd", READER).as_str())
                );
                assert_eq!(
                    (s.role_name.as_deref(), s.principal_id.as_deref()),
                    (Some("Reader"), Some(P))
                );
                assert_eq!((s.pre_existing, s.pending_removal.len()), (None, 0));
            },
        },
        Case {
            name: "the steady state, vouched for by the drift feed, writes nothing",
            rd: delegation(json!({})),
            status: holding(&own("rd", READER), READER, "Reader"),
            g: gathered(
                vec![policy("Report", &["Reader"])],
                reader(),
                Some(Observed::Fresh),
            ),
            steps: vec!["record".into(), "record".into()],
            next: "ready",
            check: |s| assert_eq!(s, &holding(&own("rd", READER), READER, "Reader")),
        },
    ]
}

fn recreation_and_replacement() -> Vec<Case> {
    vec![
        Case {
            name: "the steady state, read, only verifies",
            rd: delegation(json!({})),
            status: holding(&own("rd", READER), READER, "Reader"),
            g: gathered(
                vec![policy("Report", &["Reader"])],
                reader(),
                read(Some(assignment(&own("rd", READER), READER))),
            ),
            steps: vec![
                "record".into(),
                format!("verified {}", own("rd", READER)),
                "record".into(),
            ],
            next: "ready",
            check: |s| assert_eq!(s, &holding(&own("rd", READER), READER, "Reader")),
        },
        Case {
            name: "an assignment removed in Azure is made again, as a recreation",
            rd: delegation(json!({})),
            status: holding(&own("rd", READER), READER, "Reader"),
            g: gathered(
                vec![policy("Report", &["Reader"])],
                reader(),
                read_own(None, READER),
            ),
            steps: vec![
                "record".into(),
                format!("put {}", own("rd", READER)),
                format!("verified {}", own("rd", READER)),
                format!("event RoleAssignmentRecreated {}", own("rd", READER)),
                "record".into(),
            ],
            next: "ready",
            check: |s| {
                assert_eq!(
                    s.role_assignment_id.as_deref(),
                    Some(own("rd", READER).as_str())
                )
            },
        },
        Case {
            name: "a role change makes the new assignment, keeps the old in pendingRemoval, then removes it",
            rd: delegation(json!({"role": {"name": "Contributor"}})),
            status: holding(&own("rd", READER), READER, "Reader"),
            g: gathered(
                vec![policy("Report", &["Reader", "Contributor"])],
                contributor(),
                read_own(None, CONTRIBUTOR),
            ),
            steps: vec![
                "record".into(),
                format!("put {}", own("rd", CONTRIBUTOR)),
                format!("verified {}", own("rd", CONTRIBUTOR)),
                format!("event RoleAssigned {}", own("rd", CONTRIBUTOR)),
                format!("record, pending removal {}", own("rd", READER)),
                format!("remove replaced {}", own("rd", READER)),
                "record".into(),
            ],
            next: "ready",
            check: |s| {
                assert_eq!(
                    s.role_assignment_id.as_deref(),
                    Some(own("rd", CONTRIBUTOR).as_str())
                );
                assert!(s.pending_removal.is_empty(), "{:?}", s.pending_removal);
                assert_eq!(s.role_name.as_deref(), Some("Contributor"));
            },
        },
    ]
}

fn pending_and_principal_waits() -> Vec<Case> {
    let mut replaced = holding(&own("rd", READER), READER, "Reader");
    replaced.pending_removal = vec![own("rd", "0a0a0a0a-0000-4000-8000-00000000000a")];
    let waited = RoleDelegationStatus {
        waiting_for_principal_since: Some(Time(t0() - jiff_hours(2))),
        ..RoleDelegationStatus::default()
    };
    let refused = |why| {
        let mut g = gathered(
            vec![policy("Report", &["Reader"])],
            reader(),
            read_own(None, READER),
        );
        g.refused = Some(why);
        g
    };
    let (unknown, stalled, exists) = (
        refused(Refused::PrincipalUnknown),
        refused(Refused::PrincipalUnknown),
        refused(Refused::Exists),
    );
    vec![
        Case {
            name: "a removal left over from a failed reconcile is finished first in line",
            rd: delegation(json!({})),
            status: replaced,
            g: gathered(
                vec![policy("Report", &["Reader"])],
                reader(),
                Some(Observed::Fresh),
            ),
            steps: vec![
                format!(
                    "record, pending removal {}",
                    own("rd", "0a0a0a0a-0000-4000-8000-00000000000a")
                ),
                format!(
                    "record, pending removal {}",
                    own("rd", "0a0a0a0a-0000-4000-8000-00000000000a")
                ),
                format!(
                    "remove replaced {}",
                    own("rd", "0a0a0a0a-0000-4000-8000-00000000000a")
                ),
                "record".into(),
            ],
            next: "ready",
            check: |s| assert!(s.pending_removal.is_empty()),
        },
        Case {
            name: "a principal Azure does not know yet is waited for, from now",
            rd: delegation(json!({})),
            status: RoleDelegationStatus::default(),
            g: unknown,
            steps: vec!["record".into(), "record".into()],
            next: "WaitingForPrincipalReplication (stalled: false)",
            check: |s| {
                assert!(s.waiting_for_principal_since.is_some());
                assert_eq!(s.role_assignment_id, None);
            },
        },
        Case {
            name: "a principal still unknown after the window is Stalled",
            rd: delegation(json!({})),
            status: waited,
            g: stalled,
            steps: vec!["record".into(), "record".into()],
            next: "PrincipalNotFound (stalled: true)",
            check: |s| {
                assert_eq!(
                    s.waiting_for_principal_since,
                    Some(Time(t0() - jiff_hours(2))),
                    "kept"
                )
            },
        },
        Case {
            name: "a grant that exists under another name is looked for",
            rd: delegation(json!({})),
            status: RoleDelegationStatus::default(),
            g: exists,
            steps: vec!["record".into()],
            next: "read SameGrant",
            check: |_| {},
        },
    ]
}

fn pre_existing_and_policy_changes() -> Vec<Case> {
    let foreign = foreign();
    let mut pre_existing = holding(&foreign, READER, "Reader");
    pre_existing.pre_existing = Some(true);
    let mut listed = gathered(
        vec![policy("Report", &["Reader"])],
        reader(),
        read_own(None, READER),
    );
    listed.refused = Some(Refused::Exists);
    listed.same_grant = Some(vec![assignment(&foreign, READER)]);
    vec![
        Case {
            name: "found, and no delegation holds it: recorded as pre-existing",
            rd: delegation(json!({})),
            status: RoleDelegationStatus::default(),
            g: listed,
            steps: vec![
                "record".into(),
                "event PreExistingAssignment".into(),
                "record".into(),
            ],
            next: "ready",
            check: |s| {
                assert_eq!(s.pre_existing, Some(true));
                assert!(s.role_assignment_id.as_deref().unwrap().ends_with(FOREIGN));
            },
        },
        Case {
            name: "a pre-existing assignment that still stands is never touched",
            rd: delegation(json!({})),
            status: pre_existing.clone(),
            g: gathered(
                vec![policy("Report", &["Reader"])],
                reader(),
                Some(Observed::PreExistingStands(assignment(&foreign, READER))),
            ),
            steps: vec!["record".into(), "record".into()],
            next: "ready",
            check: |s| assert_eq!(s.pre_existing, Some(true)),
        },
        Case {
            name: "a pre-existing assignment is kept, not revoked, when a Revoke policy forbids",
            rd: delegation(json!({})),
            status: pre_existing,
            g: gathered(vec![policy("Revoke", &["Contributor"])], None, None),
            steps: vec![],
            next: "DeniedByPolicy (stalled: true)",
            check: |s| assert_eq!(s.pre_existing, Some(true)),
        },
        Case {
            name: "a policy that now forbids, with Report, keeps the assignment",
            rd: delegation(json!({})),
            status: holding(&own("rd", READER), READER, "Reader"),
            g: gathered(vec![policy("Report", &["Contributor"])], None, None),
            steps: vec![],
            next: "DeniedByPolicy (stalled: true)",
            check: |s| {
                assert_eq!(
                    s.role_assignment_id.as_deref(),
                    Some(own("rd", READER).as_str())
                )
            },
        },
        Case {
            name: "a policy that now forbids, with Revoke, revokes it and forgets it",
            rd: delegation(json!({})),
            status: holding(&own("rd", READER), READER, "Reader"),
            g: gathered(vec![policy("Revoke", &["Contributor"])], None, None),
            steps: vec![format!("revoke {}", own("rd", READER)), "record".into()],
            next: "DeniedByPolicy (stalled: true)",
            check: |s| {
                assert_eq!(
                    (s.role_assignment_id.as_deref(), s.policy.as_deref()),
                    (None, None)
                );
                assert_eq!(s.role_name, None);
            },
        },
    ]
}

fn refusals() -> Vec<Case> {
    vec![
        Case {
            name: "a principal the policy does not list is refused before anything is read",
            rd: delegation(json!({"principalId": FOREIGN})),
            status: RoleDelegationStatus::default(),
            g: gathered(vec![policy("Report", &["Reader"])], None, None),
            steps: vec![],
            next: "DeniedByPolicy (stalled: true)",
            check: |s| assert_eq!(s.policy, None),
        },
        Case {
            name: "the operator's own identity is refused, whatever a policy lists",
            rd: delegation(json!({"principalId": OPERATOR})),
            status: RoleDelegationStatus::default(),
            g: {
                let mut p = policy("Report", &["Reader"]);
                p.spec.principals.push(OPERATOR.into());
                gathered(vec![p], None, None)
            },
            steps: vec![],
            next: "DeniedByPolicy (stalled: true)",
            check: |s| assert_eq!(s.policy, None),
        },
        Case {
            name: "a role that can assign roles is not covered by '*'",
            rd: delegation(json!({"role": {"name": "Privileged Helper"}})),
            status: RoleDelegationStatus::default(),
            g: gathered(
                vec![policy("Report", &["*"])],
                Some(Role::Found({
                    let mut r = builtin("Privileged Helper", CONTRIBUTOR);
                    r.properties.permissions = vec![Permission {
                        actions: vec!["Microsoft.Authorization/*".into()],
                        ..Permission::default()
                    }];
                    r
                })),
                None,
            ),
            steps: vec!["record".into()],
            next: "DeniedByPolicy (stalled: true)",
            check: |s| {
                assert_eq!(
                    s.policy.as_deref(),
                    Some("team-a"),
                    "allowed by name, as asked"
                )
            },
        },
        Case {
            name: "a role assignable elsewhere is refused before the assignment is read",
            rd: delegation(json!({})),
            status: RoleDelegationStatus::default(),
            g: gathered(
                vec![policy("Report", &["Reader"])],
                Some(Role::Found({
                    let mut r = builtin("Reader", READER);
                    r.properties.assignable_scopes =
                        vec![format!("{}/resourceGroups/other", sub())];
                    r
                })),
                None,
            ),
            steps: vec!["record".into()],
            next: "RoleNotAssignableAtScope (stalled: true)",
            check: |_| {},
        },
    ]
}

/// The id of the assignment an earlier version made for the grant, under its legacy name.
fn legacy() -> String {
    RoleAssignmentId::new(rg(), &naming::legacy_assignment_name(&rg(), READER, P)).to_string()
}

fn legacy_names() -> Vec<Case> {
    let older = {
        let mut other = role_delegation_with("older", json!({"principalId": P}));
        other.metadata.creation_timestamp = Some(Time(t0() - jiff_hours(1)));
        other.status = Some(holding(&legacy(), READER, "Reader"));
        Arc::new(other)
    };
    let legacy_name = RoleAssignmentId::parse(&legacy())
        .unwrap()
        .name()
        .to_string();
    vec![
        Case {
            name: "a legacy assignment an older delegation also records is its: Conflict, nothing read",
            rd: delegation(json!({})),
            status: holding(&legacy(), READER, "Reader"),
            g: {
                let mut g = gathered(vec![policy("Report", &["Reader"])], reader(), None);
                g.delegations = vec![older];
                g
            },
            steps: vec!["record".into()],
            next: "Conflict (stalled: true)",
            check: |s| assert_eq!(s.role_assignment_id, Some(legacy())),
        },
        Case {
            name: "a legacy assignment this delegation holds stays under its name",
            rd: delegation(json!({})),
            status: holding(&legacy(), READER, "Reader"),
            g: gathered(
                vec![policy("Report", &["Reader"])],
                reader(),
                Some(Observed::Read {
                    name: legacy_name,
                    existing: Some(assignment(&legacy(), READER)),
                    started: tokio::time::Instant::now(),
                }),
            ),
            steps: vec![
                "record".into(),
                format!("verified {}", legacy()),
                "record".into(),
            ],
            next: "ready",
            check: |s| assert_eq!(s.role_assignment_id, Some(legacy())),
        },
    ]
}

fn custom_roles() -> Vec<Case> {
    vec![
        Case {
            name: "a custom role missing in Azure is defined at its home, then the plan goes on",
            rd: delegation(json!({"role": {"name": null, "custom": {
                "roleName": "disks", "actions": ["Microsoft.Compute/disks/read"]}}})),
            status: RoleDelegationStatus::default(),
            g: gathered(
                vec![policy("Report", &[])],
                Some(Role::CustomToDefine { conflict: None }),
                None,
            ),
            steps: vec![
                "record".into(),
                format!(
                    "define {} at {}",
                    naming::custom_role_guid(CLUSTER_ID, NAMESPACE, "disks"),
                    rg()
                ),
            ],
            next: "again",
            check: |_| {},
        },
        Case {
            name: "a custom role another delegation defines differently is a conflict",
            rd: delegation(json!({"role": {"name": null, "custom": {
                "roleName": "disks", "actions": ["Microsoft.Compute/disks/read"]}}})),
            status: RoleDelegationStatus::default(),
            g: gathered(
                vec![policy("Report", &[])],
                Some(Role::CustomToDefine {
                    conflict: Some("other".into()),
                }),
                None,
            ),
            steps: vec!["record".into()],
            next: "CustomRoleConflict (stalled: true)",
            check: |_| {},
        },
    ]
}

#[test]
fn the_plan_for_a_live_delegation() {
    let cases = [
        fresh_and_steady(),
        recreation_and_replacement(),
        pending_and_principal_waits(),
        pre_existing_and_policy_changes(),
        refusals(),
        custom_roles(),
        legacy_names(),
    ];
    for case in cases.into_iter().flatten() {
        let spec = Spec::of(&case.rd).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let plan = plan(&spec, &case.status, &case.g, t0());
        assert_eq!(render(&plan.steps), case.steps, "{}", case.name);
        assert_eq!(render_next(&plan.next), case.next, "{}", case.name);
        (case.check)(&recorded(&plan.steps, &case.status));
    }
}

fn jiff_hours(h: i64) -> k8s_openapi::jiff::Span {
    k8s_openapi::jiff::Span::new().hours(h)
}

/// (name, spec overrides, status, why Orphan may not stay, steps)
type DeletionCase = (
    &'static str,
    serde_json::Value,
    RoleDelegationStatus,
    Option<&'static str>,
    Vec<String>,
);

#[test]
fn the_plan_for_a_deleted_delegation() {
    let custom = json!({"role": {"name": null, "custom": {
        "roleName": "disks", "actions": ["Microsoft.Compute/disks/read"]}}});
    let old = own("rd", "0a0a0a0a-0000-4000-8000-00000000000a");
    let mut with_pending = holding(&own("rd", READER), READER, "Reader");
    with_pending.pending_removal = vec![old.clone()];
    let mut pre_existing = with_pending.clone();
    pre_existing.pre_existing = Some(true);
    let guid = naming::custom_role_guid(CLUSTER_ID, NAMESPACE, "disks");
    let mut custom_status = holding(&own("rd", &guid), &guid, "disks");
    custom_status.role_definition_id = Some(format!(
        "{}/providers/Microsoft.Authorization/roleDefinitions/{guid}",
        sub()
    ));
    let cases: [DeletionCase; 6] = [
        (
            "Delete removes the assignment, then the ones it replaced",
            json!({}),
            with_pending.clone(),
            None,
            vec![
                format!("remove {}", own("rd", READER)),
                format!("remove {old}"),
            ],
        ),
        (
            "Delete never removes a pre-existing assignment",
            json!({}),
            pre_existing,
            None,
            vec![format!("remove {old}")],
        ),
        (
            "Delete removes the custom role if no one else uses it",
            custom.clone(),
            custom_status,
            None,
            vec![
                format!("remove {}", own("rd", &guid)),
                format!("remove custom role {guid}"),
            ],
        ),
        (
            "Delete of a custom role never assigned still removes the role the spec defines",
            custom,
            RoleDelegationStatus::default(),
            None,
            vec![format!("remove custom role {guid}")],
        ),
        (
            "Orphan leaves everything when a policy still allows it",
            json!({"deletionPolicy": "Orphan"}),
            with_pending.clone(),
            None,
            vec!["event Orphaned".into()],
        ),
        (
            "Orphan that no policy allows any more removes, and warns",
            json!({"deletionPolicy": "Orphan"}),
            with_pending,
            Some("no DelegationPolicy selects namespace team-a"),
            vec![
                "event OrphanRevoked".into(),
                format!("remove {}", own("rd", READER)),
                format!("remove {old}"),
            ],
        ),
    ];
    for (name, overrides, status, orphan_denied, steps) in cases {
        let rd = delegation(overrides);
        let planned = cleanup(&rd, &status, CLUSTER_ID, orphan_denied.map(str::to_string));
        assert_eq!(render(&planned), steps, "{name}");
    }
}

#[test]
fn principal_waits_keep_their_start_and_end_with_the_window() {
    let settings = Settings {
        replication_window: Duration::from_secs(3600),
        tenant_id: "tenant".into(),
        ..Settings::default()
    };
    // (name, waiting since, now, reason, retry)
    let cases = [
        (
            "first refusal",
            None,
            t0(),
            "WaitingForPrincipalReplication",
            Some(2),
        ),
        (
            "ten minutes in",
            Some(t0()),
            t0() + k8s_openapi::jiff::Span::new().minutes(10),
            "WaitingForPrincipalReplication",
            Some(300),
        ),
        (
            "the window over",
            Some(t0()),
            t0() + jiff_hours(1),
            "PrincipalNotFound",
            None,
        ),
    ];
    for (name, since, now, reason, retry) in cases {
        let since = since.map(Time);
        let (kept, error) = principal_wait(since.as_ref(), now, &settings, P);
        assert_eq!(kept, since.clone().unwrap_or(Time(now)), "{name}");
        assert_eq!(error.reason(), reason, "{name}");
        let waited = match &error {
            Error::PrincipalReplicating { retry, .. } => Some(retry.as_secs()),
            _ => None,
        };
        assert_eq!(waited, retry, "{name}");
        assert!(error.to_string().contains(P), "{name}: {error}");
    }
}
