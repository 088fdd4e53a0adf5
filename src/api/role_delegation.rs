//! `RoleDelegation`: one Azure role assignment for a principal at an ARM scope.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    ARM_SCOPE_MESSAGE, ARM_SCOPE_PATTERN, DeletionPolicy, GUID_PATTERN, LocalObjectReference,
    ROLE_DEFINITION_ID_PATTERN,
};
use super::delegation_policy::ViolationAction;

/// The desired role assignment: who gets which role where.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "entra-operator.io",
    version = "v1alpha1",
    kind = "RoleDelegation",
    namespaced,
    status = "RoleDelegationStatus",
    shortname = "rd",
    category = "entra",
    derive = "PartialEq",
    doc = "One Azure role assignment: a role, by built-in name, by definition id or defined here, granted to a \
           principal at an ARM scope, within what the cluster's policy allows the namespace.",
    printcolumn(
        name = "Role",
        type_ = "string",
        json_path = ".status.roleName",
        description = "Name of the assigned role"
    ),
    printcolumn(name = "Scope", type_ = "string", json_path = ".spec.scope"),
    printcolumn(
        name = "Principal",
        type_ = "string",
        json_path = ".status.principalId",
        priority = 1
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("has(self.principalRef) != has(self.principalId)")
    .message("exactly one of principalRef and principalId must be set")
    .field_path(".principalRef"))]
#[x_kube(validation = Rule::new("has(self.conditionVersion) == has(self.condition)")
    .message("conditionVersion must be set together with condition")
    .field_path(".conditionVersion"))]
#[serde(rename_all = "camelCase")]
pub struct RoleDelegationSpec {
    /// A ServicePrincipal in this namespace whose service principal receives the role. The assignment waits
    /// until it is Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_ref: Option<LocalObjectReference>,

    /// Object id of any service principal, such as a managed identity, instead of principalRef.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = GUID_PATTERN))]
    pub principal_id: Option<String>,

    /// The role to assign: exactly one of name, id and custom.
    pub role: RoleRef,

    /// ARM scope of the assignment: /subscriptions/{id}, a resource group below it, or a resource (child
    /// resources such as a subnet included), e.g.
    /// /subscriptions/{id}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{name}.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new(format!("self.matches('{ARM_SCOPE_PATTERN}')")).message(ARM_SCOPE_MESSAGE))]
    #[x_kube(validation = Rule::new("!self.matches('(^|/)[.][.]?(/|$)') && !self.contains('%')")
        .message("must not contain '.' or '..' segments or percent escapes"))]
    pub scope: String,

    /// Optional ABAC condition that further limits the assignment (Azure attribute-based access control).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8192))]
    pub condition: Option<String>,

    /// Version of the condition language; "2.0" is the only one Azure accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition_version: Option<ConditionVersion>,

    /// Description stored on the role assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// What happens in Azure when this object is deleted: Delete removes the role assignment (and a custom role
    /// no other delegation uses); Orphan leaves them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// The version of the ABAC condition language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionVersion {
    /// Azure ABAC conditions, version 2.0.
    #[serde(rename = "2.0")]
    V2,
}

/// A role: a built-in or existing role by name or by definition id, or a custom role the operator defines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.name), has(self.id), has(self.custom)].filter(x, x).size() == 1")
    .message("exactly one of name, id and custom must be set"))]
pub struct RoleRef {
    /// Role name as Azure lists it, e.g. "Key Vault Secrets User", "AcrPull", "Network Contributor". Resolved
    /// through the role definitions visible at the scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub name: Option<String>,

    /// Role definition id: a GUID or the definition's ARM id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = Rule::new(format!("self.matches('{ROLE_DEFINITION_ID_PATTERN}')"))
        .message("must be a role definition GUID, or /providers/Microsoft.Authorization/roleDefinitions/{guid} \
                  (optionally below /subscriptions/{id})"))]
    pub id: Option<String>,

    /// A custom role that the operator defines, and removes when no delegation uses it any more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<CustomRole>,
}

/// The definition of a custom Azure role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.actions) && size(self.actions) > 0) || (has(self.dataActions) && size(self.dataActions) > 0)")
    .message("a custom role needs at least one action or data action")
    .field_path(".actions"))]
pub struct CustomRole {
    /// Name of the role, unique in the tenant.
    #[schemars(length(min = 1, max = 512))]
    pub role_name: String,

    /// Description of the role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub description: Option<String>,

    /// Control-plane operations the role allows, e.g. Microsoft.Compute/disks/read.
    #[serde(default)]
    #[schemars(length(max = 100), inner(length(min = 1, max = 512)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub actions: Vec<String>,

    /// Control-plane operations excluded from actions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(min = 1, max = 512)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub not_actions: Vec<String>,

    /// Data-plane operations the role allows, e.g. Microsoft.KeyVault/vaults/secrets/getSecret/action.
    #[serde(default)]
    #[schemars(length(max = 100), inner(length(min = 1, max = 512)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub data_actions: Vec<String>,

    /// Data-plane operations excluded from dataActions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(min = 1, max = 512)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub not_data_actions: Vec<String>,

    /// Scopes where the role may be assigned. Default: the delegation's scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20), inner(length(min = 1, max = 1024)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[x_kube(validation = Rule::new(format!("self.all(s, s.matches('{ARM_SCOPE_PATTERN}'))")).message(ARM_SCOPE_MESSAGE))]
    pub assignable_scopes: Vec<String>,
}

/// The observed state of a RoleDelegation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleDelegationStatus {
    /// ARM id of the role assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_assignment_id: Option<String>,
    /// True when the assignment existed before under another name and is not the operator's: it is never
    /// deleted by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_existing: Option<bool>,
    /// ARM id of the role definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_definition_id: Option<String>,
    /// Name of the role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_name: Option<String>,
    /// Object id of the principal holding the role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_id: Option<String>,
    /// Assignments this delegation made before a change of role, scope or principal, not removed yet: they go
    /// once the new one stands, and on delete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_removal: Vec<String>,
    /// The DelegationPolicy that allowed the delegation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// That policy's violations setting when it allowed the delegation: if the policy is deleted, a Revoke
    /// recorded here still revokes the assignment once nothing allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_violations: Option<ViolationAction>,
    /// Since when Azure has answered that the principal does not exist (replication of a new principal); the
    /// delegation is reported Stalled once this is older than the operator's replication window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for_principal_since: Option<Time>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready summarises; finer conditions say which step is pending or failing and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
