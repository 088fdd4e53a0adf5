//! The RoleDelegation controller's plan: a pure function of the spec, the status, what was gathered and the
//! time, returning the status to record and the steps to take, in order. It is asked again after each round of
//! gathering or acting (a custom role defined, a PUT refused), and says what to read next when it cannot
//! decide yet, so that nothing is read that the decision does not need: a denied delegation reads nothing from
//! Azure, a missing role reads no assignment.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{ResourceExt, runtime::events::EventType};
use tokio::time::Instant;

use super::{
    Error,
    ownership::{conflict, holder_of, our_custom_role, recording},
    rules,
};
use crate::{
    api::{DelegationPolicy, DeletionPolicy, RoleDelegation, RoleDelegationStatus, conditions},
    azure::{
        arm::{Permission, RoleAssignment, RoleDefinition},
        scope::{RoleAssignmentId, RoleDefinitionId, Scope},
    },
    controller::{
        claims::{self, Claimant},
        drift, naming,
        policy::{
            self, Decision, RoleAsked,
            grants::{AllowedBefore, PrincipalAsked},
        },
    },
};

/// The spec as the controller acts on it, parsed once.
pub struct Spec<'a> {
    pub rd: &'a RoleDelegation,
    pub namespace: String,
    pub scope: Scope,
    /// Where a custom role is made assignable (its first scope is its home); empty for other roles.
    pub custom_scopes: Vec<Scope>,
    /// spec.role.id, parsed.
    pub role_id: Option<RoleDefinitionId>,
}

impl<'a> Spec<'a> {
    /// The spec, or why the operator cannot act on it (naming the field).
    pub fn of(rd: &'a RoleDelegation) -> Result<Spec<'a>, Error> {
        let scope =
            Scope::parse(&rd.spec.scope).map_err(|e| Error::Invalid(format!("spec.scope: {e}")))?;
        let custom_scopes = match &rd.spec.role.custom {
            Some(custom) => rules::custom_scopes(custom, &scope).map_err(Error::Invalid)?,
            None => vec![],
        };
        let role_id = match (&rd.spec.role.name, &rd.spec.role.id) {
            (None, Some(id)) => Some(
                RoleDefinitionId::parse(id)
                    .map_err(|e| Error::Invalid(format!("spec.role.id: {e}")))?,
            ),
            _ => None,
        };
        let spec = Spec {
            rd,
            namespace: rd.namespace().unwrap_or_default(),
            scope,
            custom_scopes,
            role_id,
        };
        spec.asked(None)?;
        Ok(spec)
    }

    /// What the spec asks the guardrail about: the role and the principal.
    pub fn asked(
        &self,
        operator: Option<&str>,
    ) -> Result<(RoleAsked<'_>, PrincipalAsked<'_>), Error> {
        let role = &self.rd.spec.role;
        let asked = match (&role.name, &self.role_id, &role.custom) {
            (Some(name), _, _) => RoleAsked::Name(name),
            (_, Some(id), _) => RoleAsked::Id(id.guid()),
            (_, _, Some(custom)) => RoleAsked::Custom {
                role_name: &custom.role_name,
                actions: &custom.actions,
                not_actions: &custom.not_actions,
                data_actions: &custom.data_actions,
                assignable_scopes: &self.custom_scopes,
            },
            _ => {
                return Err(Error::Invalid(
                    "spec.role: one of name, id and custom must be set".into(),
                ));
            }
        };
        // principalId first, as the principal is read: the guardrail decides about who gets the role.
        if self.rd.spec.principal_id.is_none() && self.rd.spec.principal_ref.is_none() {
            return Err(Error::Invalid(
                "spec: one of principalRef and principalId must be set".into(),
            ));
        }
        Ok((
            asked,
            PrincipalAsked::of(self.rd.spec.principal_id.as_deref(), operator),
        ))
    }
}

/// The operator's settings a plan depends on.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub cluster_id: String,
    pub tenant_id: String,
    /// The operator's own object id: never granted anything for a namespace.
    pub operator: Option<String>,
    pub replication_window: Duration,
}

/// Everything read for one reconcile, filled in as the plan asks for it.
#[derive(Default)]
pub struct Gathered {
    pub settings: Settings,
    /// The namespace's labels, which the policies select on.
    pub labels: BTreeMap<String, String>,
    pub policies: Vec<Arc<DelegationPolicy>>,
    /// The delegations of this cluster, from the watch's store: who records or holds an assignment.
    pub delegations: Vec<Arc<RoleDelegation>>,
    /// The principal's object id (lower case when given by spec.principalId).
    pub principal: Option<String>,
    pub role: Option<Role>,
    pub assignment: Option<Observed>,
    /// How Azure refused the PUT of the assignment.
    pub refused: Option<Refused>,
    /// After RoleAssignmentExists: the principal's assignments at, above and below the scope.
    pub same_grant: Option<Vec<RoleAssignment>>,
}

/// The role, as Azure has it.
pub enum Role {
    /// Found by name or id, or this namespace's custom role as the spec defines it.
    Found(RoleDefinition),
    /// The custom role is missing or differs; `conflict` names another delegation of the namespace that defines
    /// it differently.
    CustomToDefine { conflict: Option<String> },
}

/// What was learned about the assignment.
pub enum Observed {
    /// The assignment recorded as pre-existing still grants what the spec asks.
    PreExistingStands(RoleAssignment),
    /// The assignment is as it was when this spec was last Ready, and its subscription's listing has seen no
    /// change to it since: not read.
    Fresh,
    /// Read under `name` (the legacy name, or this delegation's own): `existing` is what Azure holds there.
    Read {
        name: String,
        existing: Option<RoleAssignment>,
        /// When the reads started, for the drift index.
        started: Instant,
    },
}

/// Why Azure refused the PUT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// PrincipalNotFound: the principal has not replicated yet.
    PrincipalUnknown,
    /// RoleAssignmentExists: the grant exists under another name.
    Exists,
}

/// One thing to do. Steps run in order; the first that fails ends the reconcile, with the status recorded so far.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// From here on, the status to write is this one.
    Record(Box<RoleDelegationStatus>),
    Event {
        type_: EventType,
        reason: &'static str,
        note: String,
    },
    /// The assignment was made (an Event, and a log line with its id).
    Assigned {
        id: String,
        reason: &'static str,
        note: String,
    },
    /// PUT this namespace's custom role at its home scope; the plan is asked again with what Azure returns.
    DefineCustomRole {
        home: Scope,
        guid: String,
        role_name: String,
        description: String,
        permission: Permission,
        assignable_scopes: Vec<String>,
    },
    /// PUT the assignment; a refusal the plan knows how to answer (`Refused`) is handed back to it.
    PutAssignment {
        id: RoleAssignmentId,
        role_definition_id: String,
        principal_id: String,
        condition: Option<String>,
        condition_version: Option<&'static str>,
        description: Option<String>,
    },
    /// Tell the drift index the assignment grants `grant` as of `started`.
    Verified {
        id: RoleAssignmentId,
        grant: u64,
        started: Instant,
    },
    /// Remove an assignment this delegation replaced (if it is its to remove), with an Event.
    RemoveReplaced { id: String },
    /// Remove an assignment on deletion (if it is this delegation's to remove).
    RemoveAssignment { id: String },
    /// Remove this delegation's assignment and its unused custom role because a policy forbids it, with an
    /// Event saying why (`message`).
    Revoke {
        id: String,
        custom_role: Option<CustomRoleRef>,
        message: String,
    },
    /// Remove this namespace's custom role unless another live delegation of the namespace uses it.
    RemoveCustomRole(CustomRoleRef),
}

/// A custom role this namespace defined: its GUID, and its id as the status recorded it (which says where it
/// lives), if known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomRoleRef {
    pub guid: String,
    pub definition_id: Option<String>,
}

/// What to do after the steps.
#[derive(Debug)]
pub enum Next {
    /// Read this, then ask the plan again.
    Read(Need),
    /// Ask the plan again with what the steps returned (the custom role just defined).
    Again,
    /// The reconcile ends: Ready, or this failure.
    Done(Result<(), Error>),
    /// The reconcile ends with the PUT's own error (RoleAssignmentExists, and the grant is nowhere to be seen).
    PutError,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    PrincipalAndRole,
    Assignment,
    SameGrant,
}

#[derive(Debug)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub next: Next,
}

impl Plan {
    fn done(steps: Vec<Step>, result: Result<(), Error>) -> Plan {
        Plan {
            steps,
            next: Next::Done(result),
        }
    }
}

/// The plan for a delegation that exists: guardrail, role, assignment, then the bookkeeping of what it replaced.
pub fn plan(spec: &Spec, status: &RoleDelegationStatus, g: &Gathered, now: Timestamp) -> Plan {
    let mut status = status.clone();
    match guard(spec, &status, g, None) {
        Decision::Allowed { policy, violations } => {
            status.policy = Some(policy);
            status.policy_violations = Some(violations);
        }
        Decision::Denied { message, revoke } => return denial(spec, &status, g, message, revoke),
    }
    let mut steps = vec![Step::Record(Box::new(status.clone()))];
    let (Some(principal), Some(role)) = (&g.principal, &g.role) else {
        return Plan {
            steps,
            next: Next::Read(Need::PrincipalAndRole),
        };
    };
    let definition = match role {
        Role::Found(definition) => definition,
        Role::CustomToDefine { conflict } => {
            return match define(spec, g, conflict.as_deref()) {
                Ok(step) => {
                    steps.push(step);
                    Plan {
                        steps,
                        next: Next::Again,
                    }
                }
                Err(e) => Plan::done(steps, Err(e)),
            };
        }
    };
    if let Some(denied) = resolved(spec, &status, g, definition) {
        steps.extend(denied.steps);
        return Plan {
            steps,
            next: denied.next,
        };
    }
    if !rules::assignable_at(&definition.properties.assignable_scopes, &spec.scope) {
        return Plan::done(
            steps,
            Err(Error::RoleNotAssignable(format!(
                "spec.role: {} can be assigned only at {}, not at spec.scope {}",
                definition.properties.role_name,
                definition.properties.assignable_scopes.join(", "),
                spec.scope
            ))),
        );
    }
    let grant = Wanted::of(spec, definition, principal);
    let names = match names(spec, &status, g, &grant) {
        Ok(names) => names,
        Err(e) => return Plan::done(steps, Err(e)),
    };
    let Some(observed) = &g.assignment else {
        return Plan {
            steps,
            next: Next::Read(Need::Assignment),
        };
    };
    match assignment(spec, &status, g, &grant, &names, observed, now) {
        Ok(Assignment::Decided {
            steps: more,
            assigned,
        }) => {
            steps.extend(more);
            steps.extend(settle(spec, &status, g, &grant, assigned));
            Plan::done(steps, Ok(()))
        }
        Ok(Assignment::Then(next, more)) => {
            steps.extend(more);
            Plan { steps, next }
        }
        Err(e) => Plan::done(steps, Err(e)),
    }
}

/// The guardrail's decision on the spec as it asks (or, with `resolved`, on the role as Azure defines it).
fn guard(
    spec: &Spec,
    status: &RoleDelegationStatus,
    g: &Gathered,
    resolved: Option<RoleAsked>,
) -> Decision {
    let (asked, principal) = spec
        .asked(g.settings.operator.as_deref())
        .expect("checked by Spec::of");
    policy::decide(
        &g.policies,
        &spec.namespace,
        &g.labels,
        &spec.scope,
        resolved.unwrap_or(asked),
        principal,
        allowed_before(status),
    )
}

pub fn allowed_before(status: &RoleDelegationStatus) -> Option<AllowedBefore<'_>> {
    status.policy.as_deref().map(|policy| AllowedBefore {
        policy,
        violations: status.policy_violations,
    })
}

/// A "*" in a policy covers neither a role that can assign roles nor someone else's custom role: decided again
/// once Azure has said what the role is (built-in names alone cannot tell). Custom roles were decided as spec'd.
fn resolved(
    spec: &Spec,
    status: &RoleDelegationStatus,
    g: &Gathered,
    definition: &RoleDefinition,
) -> Option<Plan> {
    if spec.rd.spec.role.custom.is_some() {
        return None;
    }
    let props = &definition.properties;
    let guid = RoleDefinitionId::guid_of(&definition.id);
    let ours =
        naming::custom_role_guid(&g.settings.cluster_id, &spec.namespace, &props.role_name) == guid;
    let must_be_named = policy::can_assign_roles(&props.permissions)
        || !(props.role_type.eq_ignore_ascii_case("BuiltInRole") || ours);
    let asked = RoleAsked::Resolved {
        name: &props.role_name,
        guid: &guid,
        must_be_named,
    };
    match guard(spec, status, g, Some(asked)) {
        Decision::Allowed { .. } => None,
        Decision::Denied { message, revoke } => Some(denial(spec, status, g, message, revoke)),
    }
}

/// A denial: reported, and the delegation's own assignment revoked when the policy says so.
fn denial(
    spec: &Spec,
    status: &RoleDelegationStatus,
    g: &Gathered,
    message: String,
    revoke: bool,
) -> Plan {
    let ours = status
        .role_assignment_id
        .clone()
        .filter(|_| status.pre_existing != Some(true));
    let Some(id) = ours else {
        return Plan::done(vec![], Err(Error::DeniedByPolicy(message)));
    };
    if !revoke {
        return Plan::done(
            vec![],
            Err(Error::DeniedByPolicy(format!(
                "{message}; the existing assignment {id} is kept (a policy with violations: Revoke removes it)"
            ))),
        );
    }
    let mut revoked = status.clone();
    revoked.role_assignment_id = None;
    revoked.pre_existing = None;
    revoked.policy = None;
    revoked.policy_violations = None;
    revoked.role_definition_id = None;
    revoked.role_name = None;
    revoked.principal_id = None;
    let steps = vec![
        Step::Revoke {
            id: id.clone(),
            custom_role: our_custom_role(&g.settings.cluster_id, &spec.namespace, status),
            message: message.clone(),
        },
        Step::Record(Box::new(revoked)),
    ];
    Plan::done(
        steps,
        Err(Error::DeniedByPolicy(format!(
            "{message}; the assignment {id} was revoked"
        ))),
    )
}

/// The custom role to define, unless another delegation of the namespace defines it differently.
fn define(spec: &Spec, g: &Gathered, conflict: Option<&str>) -> Result<Step, Error> {
    let custom = spec.rd.spec.role.custom.as_ref().expect("a custom role");
    if let Some(other) = conflict {
        return Err(Error::CustomRoleConflict(format!(
            "spec.role.custom: RoleDelegation {other} defines the custom role '{}' differently; delegations that \
             share a custom role must define it the same way (assignableScopes included)",
            custom.role_name
        )));
    }
    Ok(Step::DefineCustomRole {
        home: spec.custom_scopes[0].clone(),
        guid: naming::custom_role_guid(&g.settings.cluster_id, &spec.namespace, &custom.role_name),
        role_name: custom.role_name.clone(),
        description: rules::custom_description(custom, &spec.namespace),
        permission: rules::custom_permission(custom),
        assignable_scopes: spec.custom_scopes.iter().map(Scope::to_string).collect(),
    })
}

/// The grant the spec asks for, with the role and principal Azure knows.
pub struct Wanted<'a> {
    pub definition: &'a RoleDefinition,
    /// The role's GUID, lower case.
    pub role_guid: String,
    pub principal_id: &'a str,
    pub condition: Option<&'a str>,
    pub description: Option<&'a str>,
}

impl<'a> Wanted<'a> {
    pub fn of(spec: &'a Spec, definition: &'a RoleDefinition, principal_id: &'a str) -> Self {
        Wanted {
            definition,
            role_guid: RoleDefinitionId::guid_of(&definition.id),
            principal_id,
            condition: spec.rd.spec.condition.as_deref(),
            description: spec.rd.spec.description.as_deref(),
        }
    }

    fn rules(&self) -> rules::Wanted<'a> {
        rules::Wanted {
            condition: self.condition,
            description: self.description,
        }
    }
}

/// The names this delegation's assignment may have: its own, and the legacy one its status records (if it
/// holds the claim on it; else another delegation does, and this one is in Conflict).
pub struct Names {
    pub own: String,
    pub legacy: Option<String>,
}

pub fn names(
    spec: &Spec,
    status: &RoleDelegationStatus,
    g: &Gathered,
    grant: &Wanted,
) -> Result<Names, Error> {
    let own = naming::assignment_name(
        &g.settings.cluster_id,
        &spec.namespace,
        &spec.rd.name_any(),
        &spec.scope,
        &grant.role_guid,
        grant.principal_id,
    );
    // An assignment an earlier version made under the legacy name stays where it is (no replacement on
    // upgrade), held by the oldest delegation whose status records it; the others get a Conflict.
    let legacy = naming::legacy_assignment_name(&spec.scope, &grant.role_guid, grant.principal_id);
    let legacy_id = RoleAssignmentId::new(spec.scope.clone(), &legacy);
    let holds_legacy = status.pre_existing != Some(true)
        && status
            .role_assignment_id
            .as_deref()
            .is_some_and(|id| legacy_id.is(id));
    if holds_legacy {
        let claimants: Vec<Claimant> = recording(&g.delegations, &legacy_id)
            .into_iter()
            .map(|d| Claimant::of(&**d))
            .collect();
        if let Err(holder) = claims::check(&Claimant::of(spec.rd), &claimants) {
            return Err(conflict(&holder, &legacy_id.to_string()));
        }
    }
    Ok(Names {
        own,
        legacy: holds_legacy.then_some(legacy),
    })
}

/// The name to read first: the legacy one while this delegation holds it.
pub fn first_name(names: &Names) -> &str {
    names.legacy.as_deref().unwrap_or(&names.own)
}

/// Whether the assignment may be trusted without a read, drift permitting: the same one as when this spec was
/// last Ready.
pub fn may_skip_read(
    rd: &RoleDelegation,
    status: &RoleDelegationStatus,
    known: &RoleAssignmentId,
) -> bool {
    status.pre_existing != Some(true)
        && status.observed_generation == rd.metadata.generation
        && conditions::is_true(&status.conditions, conditions::READY)
        && status
            .role_assignment_id
            .as_deref()
            .is_some_and(|recorded| known.is(recorded))
}

/// Whether a grant recorded as someone else's still stands as recorded: at the scope, of the role to the
/// principal (its condition and description are its owner's business).
pub fn pre_existing_stands(
    found: &RoleAssignment,
    scope: &Scope,
    role_guid: &str,
    principal_id: &str,
) -> bool {
    Scope::parse(&found.properties.scope).is_ok_and(|s| s == *scope)
        && rules::assignment_matches(
            found,
            role_guid,
            principal_id,
            &rules::Wanted {
                condition: found.properties.condition.as_deref(),
                description: found.properties.description.as_deref(),
            },
        )
}

/// What the delegation holds once the assignment is settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Assigned {
    /// The operator's assignment for this delegation, by its id; `created` when this reconcile PUTs it.
    Ours { id: String, created: bool },
    /// The same grant exists under another name and no delegation of this cluster holds it: someone else's,
    /// recorded and never removed.
    PreExisting(String),
}

enum Assignment {
    Decided {
        steps: Vec<Step>,
        assigned: Assigned,
    },
    Then(Next, Vec<Step>),
}

/// Makes sure the grant exists: PUTs only what is missing or different, and only under a name this delegation
/// holds; answers Azure's refusals.
fn assignment(
    spec: &Spec,
    status: &RoleDelegationStatus,
    g: &Gathered,
    grant: &Wanted,
    names: &Names,
    observed: &Observed,
    now: Timestamp,
) -> Result<Assignment, Error> {
    let decided = |steps, assigned| Ok(Assignment::Decided { steps, assigned });
    let (name, existing, started) = match observed {
        Observed::PreExistingStands(found) => {
            return match holder_of(
                &g.delegations,
                &g.settings.cluster_id,
                spec.rd,
                &spec.scope,
                found,
            ) {
                Some(holder) => Err(conflict(&holder, &found.id)),
                None => decided(vec![], Assigned::PreExisting(found.id.clone())),
            };
        }
        Observed::Fresh => {
            let id = RoleAssignmentId::new(spec.scope.clone(), first_name(names));
            return decided(
                vec![],
                Assigned::Ours {
                    id: id.to_string(),
                    created: false,
                },
            );
        }
        Observed::Read {
            name,
            existing,
            started,
        } => (name, existing, *started),
    };
    let id = RoleAssignmentId::new(spec.scope.clone(), name);
    if let Some(a) = existing.as_ref().filter(|a| {
        rules::assignment_matches(a, &grant.role_guid, grant.principal_id, &grant.rules())
    }) {
        let p = &a.properties;
        let hash = drift::grant_hash(
            &p.role_definition_id,
            &p.principal_id,
            p.condition.as_deref(),
            p.description.as_deref(),
        );
        let steps = vec![Step::Verified {
            id: id.clone(),
            grant: hash,
            started,
        }];
        let id = id.to_string();
        return decided(steps, Assigned::Ours { id, created: false });
    }
    match g.refused {
        None => Ok(put(spec, grant, id, existing.is_none(), started)),
        Some(Refused::Exists) => exists(spec, g, grant),
        Some(Refused::PrincipalUnknown) => {
            let mut waiting = status.clone();
            let (since, error) = principal_wait(
                status.waiting_for_principal_since.as_ref(),
                now,
                &g.settings,
                grant.principal_id,
            );
            waiting.waiting_for_principal_since = Some(since);
            Ok(Assignment::Then(
                Next::Done(Err(error)),
                vec![Step::Record(Box::new(waiting))],
            ))
        }
    }
}

/// The PUT of the assignment as the spec wants it, and its verification for the drift index.
fn put(
    spec: &Spec,
    grant: &Wanted,
    id: RoleAssignmentId,
    created: bool,
    started: Instant,
) -> Assignment {
    let hash = drift::grant_hash(
        &grant.definition.id,
        grant.principal_id,
        grant.condition,
        grant.description,
    );
    let steps = vec![
        Step::PutAssignment {
            id: id.clone(),
            role_definition_id: grant.definition.id.clone(),
            principal_id: grant.principal_id.to_string(),
            condition: grant.condition.map(str::to_string),
            condition_version: spec.rd.spec.condition_version.map(|_| "2.0"),
            description: grant.description.map(str::to_string),
        },
        Step::Verified {
            id: id.clone(),
            grant: hash,
            started,
        },
    ];
    let id = id.to_string();
    Assignment::Decided {
        steps,
        assigned: Assigned::Ours { id, created },
    }
}

/// After RoleAssignmentExists: the grant under another name is another delegation's (Conflict) or someone
/// else's (recorded as pre-existing); listed nowhere, ARM's answer is reported rather than a guess.
fn exists(spec: &Spec, g: &Gathered, grant: &Wanted) -> Result<Assignment, Error> {
    let Some(listed) = &g.same_grant else {
        return Ok(Assignment::Then(Next::Read(Need::SameGrant), vec![]));
    };
    let found = listed.iter().find(|a| {
        Scope::parse(&a.properties.scope).is_ok_and(|s| s == spec.scope)
            && RoleDefinitionId::guid_of(&a.properties.role_definition_id) == grant.role_guid
    });
    match found {
        Some(a) => match holder_of(
            &g.delegations,
            &g.settings.cluster_id,
            spec.rd,
            &spec.scope,
            a,
        ) {
            Some(holder) => Err(conflict(&holder, &a.id)),
            None => Ok(Assignment::Decided {
                steps: vec![],
                assigned: Assigned::PreExisting(a.id.clone()),
            }),
        },
        None => Ok(Assignment::Then(Next::PutError, vec![])),
    }
}

/// While Azure does not know the principal: since when it has not (kept from the status), and the failure to
/// report, retried with growing intervals until the replication window is over, then Stalled.
pub fn principal_wait(
    since: Option<&Time>,
    now: Timestamp,
    settings: &Settings,
    principal_id: &str,
) -> (Time, Error) {
    let since = since.cloned().unwrap_or(Time(now));
    let elapsed = now.duration_since(since.0).try_into().unwrap_or_default();
    let window = settings.replication_window;
    let error = match rules::replication_retry(elapsed, window) {
        Some(retry) => Error::PrincipalReplicating {
            // No retry delay in the text: the message (and so the Event) stays the same while waiting.
            message: format!(
                "Azure does not know principal {principal_id} yet (replication of a new principal can take up \
                 to an hour); retrying with growing intervals for up to {}m",
                window.as_secs().div_ceil(60)
            ),
            retry,
        },
        None => Error::PrincipalNotFound(format!(
            "spec.principal: Azure still does not know principal {principal_id} after {}m; check that it exists \
             in tenant {}",
            window.as_secs() / 60,
            settings.tenant_id
        )),
    };
    (since, error)
}

/// The bookkeeping once the grant stands: the Event that says what happened, the status, and the removal of
/// what it replaced (recorded first, so that a failure, or a delete, before it is removed does not forget it).
fn settle(
    spec: &Spec,
    before: &RoleDelegationStatus,
    g: &Gathered,
    grant: &Wanted,
    assigned: Assigned,
) -> Vec<Step> {
    let mut steps = vec![];
    let role_name = &grant.definition.properties.role_name;
    let (assignment_id, pre_existing) = match assigned {
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
                let note = format!(
                    "{note}: {role_name} to {} at {}",
                    grant.principal_id, spec.scope
                );
                steps.push(Step::Assigned {
                    id: id.clone(),
                    reason,
                    note,
                });
            }
            (id, false)
        }
        Assigned::PreExisting(id) => {
            if before.role_assignment_id.as_deref() != Some(id.as_str()) {
                steps.push(Step::Event {
                    type_: EventType::Normal,
                    reason: "PreExistingAssignment",
                    note: format!(
                        "The role is already assigned by {id}, which is not the operator's and is never removed by it"
                    ),
                });
            }
            (id, true)
        }
    };
    let mut status = before.clone();
    // Replaced (role, scope or principal changed): the new assignment stands, so the old one can go.
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
    status.role_definition_id = Some(grant.definition.id.clone());
    status.role_name = Some(role_name.clone());
    status.principal_id = Some(grant.principal_id.to_string());
    status.waiting_for_principal_since = None;
    steps.push(Step::Record(Box::new(status.clone())));
    while !status.pending_removal.is_empty() {
        let old = status.pending_removal.remove(0);
        steps.push(Step::RemoveReplaced { id: old });
        steps.push(Step::Record(Box::new(status.clone())));
    }
    if let Some(old) = our_custom_role(&g.settings.cluster_id, &spec.namespace, before)
        && old.guid != grant.role_guid
    {
        steps.push(Step::RemoveCustomRole(old));
    }
    steps
}

/// Why a delegation deleted with deletionPolicy Orphan may not leave its assignment behind: None when a policy
/// still allows it (as the spec asks: a spec that cannot be decided is not allowed).
pub fn orphan_denied(
    rd: &RoleDelegation,
    policies: &[Arc<DelegationPolicy>],
    labels: &BTreeMap<String, String>,
    status: &RoleDelegationStatus,
    operator: Option<&str>,
) -> Option<String> {
    let spec = match Spec::of(rd) {
        Ok(spec) => spec,
        Err(e) => return Some(e.to_string()),
    };
    let (role, principal) = match spec.asked(operator) {
        Ok(a) => a,
        Err(e) => return Some(e.to_string()),
    };
    match policy::decide(
        policies,
        &spec.namespace,
        labels,
        &spec.scope,
        role,
        principal,
        allowed_before(status),
    ) {
        Decision::Allowed { .. } => None,
        Decision::Denied { message, .. } => Some(message),
    }
}

/// The clean-up of a deleted delegation. `orphan_denied` is, under deletionPolicy Orphan, why a policy no longer
/// allows the grant (None: it does, and everything stays in Azure; see [`orphan_denied`]). Otherwise the
/// assignment and the ones it replaced go (each only if it is this delegation's), then the custom roles the
/// status and the spec name, if no other delegation uses them (one may have been defined before a failure kept
/// the assignment from being made).
pub fn cleanup(
    rd: &RoleDelegation,
    status: &RoleDelegationStatus,
    cluster_id: &str,
    orphan_denied: Option<String>,
) -> Vec<Step> {
    let mut steps = vec![];
    if rd.spec.deletion_policy == DeletionPolicy::Orphan {
        match orphan_denied {
            None => {
                return vec![Step::Event {
                    type_: EventType::Normal,
                    reason: "Orphaned",
                    note: "deletionPolicy Orphan: the role assignment is left in Azure".into(),
                }];
            }
            Some(why) => steps.push(Step::Event {
                type_: EventType::Warning,
                reason: "OrphanRevoked",
                note: format!(
                    "deletionPolicy Orphan, but no DelegationPolicy allows this grant any more ({why}): the role \
                     assignment is removed"
                ),
            }),
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
        steps.push(Step::RemoveAssignment { id: id.to_string() });
    }
    let ns = rd.namespace().unwrap_or_default();
    let mut roles: Vec<CustomRoleRef> = our_custom_role(cluster_id, &ns, status)
        .into_iter()
        .collect();
    if let Some(c) = &rd.spec.role.custom {
        let guid = naming::custom_role_guid(cluster_id, &ns, &c.role_name);
        if !roles.iter().any(|have| have.guid == guid) {
            roles.push(CustomRoleRef {
                guid,
                definition_id: None,
            });
        }
    }
    steps.extend(roles.into_iter().map(Step::RemoveCustomRole));
    steps
}

#[cfg(test)]
mod tests;
